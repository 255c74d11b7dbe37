"""`studio models list|show`: the base-model catalog, and what a name resolves to."""

from __future__ import annotations

from studio.cli import Output


def register(verbs, common) -> None:
    p = verbs.add_parser("models", parents=[common], help="the base-model catalog")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    lst = sub.add_parser("list", parents=[common], help="the curated base models")
    lst.set_defaults(handler=list_models)
    show = sub.add_parser("show", parents=[common], help="what a catalog name, hub id or folder resolves to")
    show.add_argument("name", help="demo-tiny, a hub id like Qwen/Qwen2.5-0.5B-Instruct, or a local folder")
    show.set_defaults(handler=show_model)


def list_models(args, ws) -> Output:
    """Each entry with `params` counted from its config (meta device) beside `params_b` as stated."""
    from studio.models.catalog import catalog
    from studio.models.params import cache_dir, count_params

    entries = []
    lines = [f"{'model':<40}{'stated':>9}{'counted':>10}  {'context':>8}  {'gated':<6}license"]
    for e in catalog():
        counted = count_params(e.config, cache=cache_dir(ws)).total
        entries.append(e.model_dump() | {"params": counted})
        lines.append(f"{e.id:<40}{f'{e.params_b:g}B':>9}{f'{counted / 1e9:.3g}B':>10}  {e.context:>8}  "
                     f"{'yes' if e.gated else 'no':<6}{e.license}")
    lines.append("stated: the model card's size; counted: built from its config on the meta device.")
    lines.append("Any hub id (org/model) or a local folder with a saved model works too.")
    return Output(entries, "\n".join(lines))


def show_model(args, ws) -> Output:
    from studio.models.params import cache_dir, count_params
    from studio.models.resolve import model_shape, resolve

    resolved = resolve(ws, args.name)
    shape = model_shape(ws, args.name) if resolved.local or resolved.entry else None
    counted = count_params(shape.hf_config(), cache=cache_dir(ws)).total if shape else None
    data = resolved.model_dump() | {"shape": shape.model_dump() if shape else None, "params": counted}
    text = [f"{resolved.name}: {'local folder ' if resolved.local else 'hub id '}{resolved.source}"]
    if resolved.entry:
        e = resolved.entry
        text.append(f"{e.size} parameters, {e.context} tokens context, {e.license}"
                    f"{', gated (needs HF_TOKEN)' if e.gated else ''}")
        text.append("LoRA targets: " + ", ".join(e.lora_targets))
    if shape:
        text.append(f"shape: hidden {shape.hidden}, {shape.layers} layers, vocab {shape.vocab}; "
                    f"{counted:,} parameters counted from its config")
    return Output(data, "\n".join(text))
