"""`studio serve`: run an endpoint in the foreground (catalog names and run ids resolved first).

For a managed endpoint (registered, listed, stopped from the Chat tab) use `studio endpoints start`.
"""

from __future__ import annotations

import os
import sys

from studio.cli import Output
from studio.core.argtypes import PORT, whole


def register(verbs, common) -> None:
    p = verbs.add_parser(
        "serve", parents=[common], help="serve a base model and LoRA adapters with TGI's API (foreground)",
        description="Load a base model and its adapters and answer TGI's API (/generate, /generate_stream, "
                    "/v1/chat/completions, /v1/models, /info, /health, /metrics) on 127.0.0.1 until Ctrl-C.",
    )
    p.add_argument("--model", required=True, help="base model: demo-tiny, a hub id or a local folder")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN",
                   help="serve a run's adapter (a run id, run folder or adapter folder) as NAME; repeatable")
    p.add_argument("--port", type=PORT, default=8080, help="port on 127.0.0.1 (default 8080)")
    p.add_argument("--quantize", choices=["none", "4bit"], default="none",
                   help="4bit: hold the base model in NF4 (CUDA GPU only)")
    p.add_argument("--max-total-tokens", type=whole(2), default=None, help="prompt + answer limit per request")
    p.add_argument("--max-batch-size", type=whole(1), default=8, help="requests decoded together at most (default 8)")
    p.add_argument("--dry-run", action="store_true", help="print the endpoint's command line and exit")
    p.set_defaults(handler=run)


def run(args, ws) -> Output | None:
    from studio.models.resolve import resolve
    from studio.serving.adapters import check_adapter_name, parse_adapter_specs, resolve_adapter
    from studio.serving.launch import server_argv
    
    source = resolve(ws, args.model).source
    adapters = {check_adapter_name(name, args.model): resolve_adapter(ws, ref)
                for name, ref in parse_adapter_specs(args.adapter).items()}
    extra = ["--max-batch-size", str(args.max_batch_size)]
    if args.max_total_tokens:
        extra += ["--max-total-tokens", str(args.max_total_tokens)]
    argv = server_argv(source, adapters, args.port, served_name=args.model, quantize=args.quantize, extra=extra)
    if args.dry_run:
        return Output({"argv": argv}, " ".join(argv))
    sys.stdout.flush()
    os.execv(argv[0], argv)  # the endpoint replaces this process: Ctrl-C and signals reach it directly
