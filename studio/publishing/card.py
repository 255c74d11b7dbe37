"""The model card (README.md) written into every export: what the model is, what it was trained on,
how well, what it is for and what it is not for. Pure text from facts the studio gathers.
"""

from __future__ import annotations

from typing import Any

import yaml


def render_card(facts: dict[str, Any]) -> str:
    """facts: run_id, run_name, kind (merged|adapter), base_model, dataset {id, name, rows_train, rows_val},
    preset, lora_r, max_length, metrics {loss, eval_loss, ...}, evaluation {...}, license, dtype, eos_tokens."""
    kind = facts.get("kind", "merged")
    base = facts.get("base_model", "")
    dataset = facts.get("dataset") or {}
    metrics = facts.get("metrics") or {}
    front = {
        "base_model": base,
        "library_name": "peft" if kind == "adapter" else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["llmops-studio", "lora", "text-generation-inference"] + (["merged"] if kind == "merged" else []),
    }
    if facts.get("license"):
        front["license"] = facts["license"].split(" ")[0].lower()
    what = (
        f"the LoRA adapter of run `{facts.get('run_id')}`, to be loaded on top of `{base}`"
        if kind == "adapter"
        else f"`{base}` with the LoRA adapter of run `{facts.get('run_id')}` merged into its weights "
             f"({facts.get('dtype', '16-bit')}; the merge was done in 16-bit or wider, never into 4-bit weights)"
    )
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {facts.get('run_name') or facts.get('run_id')}",
        "",
        f"A fine-tune made with LLMOps Studio. This folder holds {what}, with the tokenizer, the chat template "
        f"it was trained with and a `generation_config.json` whose end-of-sequence ids are "
        f"{', '.join(f'`{t}`' for t in facts.get('eos_tokens', [])) or 'those of the tokenizer'}.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{base}` |",
        f"| Data version | `{dataset.get('id', '')}` {dataset.get('name', '')} — "
        f"{dataset.get('rows_train', '?')} training rows, {dataset.get('rows_val', '?')} validation rows |",
        f"| Preset | {facts.get('preset') or 'custom'} |",
        f"| LoRA rank | {facts.get('lora_r') or '?'} |",
        f"| Training length | {facts.get('max_length') or '?'} tokens |",
    ]
    for key, label in (("loss", "Last training loss"), ("eval_loss", "Last validation loss")):
        if key in metrics:
            lines.append(f"| {label} | {metrics[key]:.4f} |")
    evaluation = facts.get("evaluation") or {}
    for key, value in evaluation.items():
        if isinstance(value, int | float):
            lines.append(f"| Evaluation: {key} | {value:.4g} |")
    lines += [
        "",
        "## Intended use",
        "",
        "Answering questions like those in its training data, in the style of its answers, for the people "
        "who prepared that data. Check its answers on your own golden questions before relying on them.",
        "",
        "## Limitations",
        "",
        f"- It learned from {dataset.get('rows_train', 'a few')} example conversations: outside their topic it "
        "falls back on the base model and may answer confidently and wrongly.",
        "- It inherits the base model's biases, license and knowledge cut-off.",
        "- Prompts must use the chat template stored here; another template makes it ramble or never stop.",
        f"- Inputs and answers longer than the training length ({facts.get('max_length') or '?'} tokens) were "
        "never seen in training.",
        "",
        "## Serving",
        "",
        "With Text Generation Inference (the folder mounted at `/data`):",
        "",
        "```",
        facts.get("serve_hint") or "docker run --gpus all --shm-size 1g -p 8080:80 -v $PWD:/data "
        "ghcr.io/huggingface/text-generation-inference --model-id /data --usage-stats off",
        "```",
        "",
    ]
    return "\n".join(lines)
