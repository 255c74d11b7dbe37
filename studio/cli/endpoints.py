"""`studio endpoints`: start, list, stop and register the endpoints the Chat tab and evaluation use."""

from __future__ import annotations

from studio.cli import Output
from studio.core.argtypes import PORT


def register(verbs, common) -> None:
    p = verbs.add_parser("endpoints", parents=[common], help="start, list and stop chat endpoints")
    sub = p.add_subparsers(dest="endpoints_command", required=True, metavar="ACTION")

    ls = sub.add_parser("list", parents=[common], help="list endpoints (live processes re-adopted, dead ones marked)")
    ls.add_argument("--live", action="store_true", help="only the running ones")
    ls.set_defaults(handler=run_list)

    start = sub.add_parser("start", parents=[common], help="start a local endpoint for a run or a base model",
                           description="Start an endpoint process in the background and wait until it answers.")
    what = start.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", metavar="RUN_ID", help="a finished run: its base model plus its adapter")
    what.add_argument("--model", metavar="M", help="a base model (demo-tiny, a hub id or a folder)")
    start.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN",
                       help="with --model: an adapter (run id, run folder or adapter folder) served as NAME")
    start.add_argument("--name", default=None, help="a name to find it by")
    start.add_argument("--port", type=PORT, default=None, help="port on 127.0.0.1 (default: a free one)")
    start.add_argument("--quantize", choices=["none", "4bit"], default=None,
                       help="4bit needs a CUDA GPU (default: 4-bit for a QLoRA run on CUDA, else none)")
    start.add_argument("--no-wait", action="store_true", help="return at once instead of waiting until it is ready")
    start.set_defaults(handler=run_start)

    stop = sub.add_parser("stop", parents=[common], help="stop a local endpoint")
    stop.add_argument("endpoint", help="its id, name or URL")
    stop.set_defaults(handler=run_stop)

    reg = sub.add_parser("register", parents=[common], help="register a remote TGI / vLLM / SGLang server by URL")
    reg.add_argument("url")
    reg.add_argument("--name", default=None)
    reg.add_argument("--no-check", action="store_true", help="do not ask the server for its models first")
    reg.add_argument("--api-key-env", default=None, metavar="NAME",
                     help="the environment variable that holds the server's API key (only the name is stored)")
    reg.set_defaults(handler=run_register)

    rm = sub.add_parser("remove", parents=[common], help="forget a remote or stopped endpoint")
    rm.add_argument("endpoint")
    rm.set_defaults(handler=run_remove)


def describe(ep) -> str:
    models = ", ".join([ep.base_name, *ep.adapters]) if ep.base_model or ep.adapters else "?"
    line = f"{ep.id}  {ep.status:<8} {ep.kind:<6} {ep.url:<28} models: {models}"
    if ep.name and ep.name != ep.id:
        line += f"  ({ep.name})"
    if ep.error:
        line += f"\n    {ep.error}"
    return line


def run_list(args, ws) -> Output:
    from studio.serving.endpoints import list_endpoints

    found = list_endpoints(ws, include_stopped=not args.live)
    text = "\n".join(describe(e) for e in found) or "No endpoints. Start one: studio endpoints start --run RUN_ID"
    return Output([e.model_dump() for e in found], text)


def run_start(args, ws) -> Output:
    from studio.serving.adapters import parse_adapter_specs
    from studio.serving.launch import start_endpoint, start_for_run
    
    if args.run:
        ep = start_for_run(ws, args.run, port=args.port, wait=not args.no_wait, quantize=args.quantize)
    else:
        ep = start_endpoint(ws, args.model, parse_adapter_specs(args.adapter), name=args.name, port=args.port,
                            wait=not args.no_wait, quantize=args.quantize or "none")
    return Output(ep.model_dump(), describe(ep))


def run_stop(args, ws) -> Output:
    from studio.serving.endpoints import stop_endpoint

    ep = stop_endpoint(ws, args.endpoint)
    return Output(ep.model_dump(), describe(ep))


def run_register(args, ws) -> Output:
    from studio.serving.endpoints import register_remote

    ep = register_remote(ws, args.url, args.name, check=not args.no_check, api_key_env=args.api_key_env)
    return Output(ep.model_dump(), describe(ep))


def run_remove(args, ws) -> Output:
    from studio.serving.endpoints import remove_endpoint

    ep = remove_endpoint(ws, args.endpoint)
    return Output(ep.model_dump(), f"removed {ep.id}")
