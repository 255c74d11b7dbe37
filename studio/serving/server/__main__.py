"""`python -m studio.serving.server --model M [--adapter NAME=DIR ...] --port P`: the endpoint process.

Loads the model first, then listens; the studio knows it is ready when GET /health answers 200.
A failure to load is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from studio.core.argtypes import PORT, whole


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studio.serving.server", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="base model: a local folder or a hub id")
    p.add_argument("--served-name", default="", help="the base model's name in /info, /v1/models and `model=`")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="a LoRA adapter folder to serve under NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=PORT, default=8080)
    p.add_argument("--quantize", choices=["none", "4bit"], default="none",
                   help="4bit: NF4 weights through bitsandbytes (CUDA only)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bf16 (or fp16) on CUDA, float32 on the CPU")
    p.add_argument("--max-total-tokens", type=whole(2), default=None,
                   help="prompt + answer limit per request (default: the model's context length)")
    p.add_argument("--max-batch-size", type=whole(1), default=8, help="requests decoded together at most")
    p.add_argument("--max-batch-rows", type=whole(1), default=None,
                   help="rows of batch requests (X-Studio-Priority: batch, an evaluation's) in the running batch "
                        "at most, so chat always finds a row (default: 3/4 of --max-batch-size)")
    p.add_argument("--prefill-chunk", type=whole(1), default=256,
                   help="prompt tokens read per forward: a long prompt is read in chunks between decoding steps")
    p.add_argument("--max-concurrent-requests", type=whole(1), default=128,
                   help="requests in flight at most; more get 429 overloaded")
    p.add_argument("--threads", type=whole(0), default=0,
                   help="CPU threads for torch (default: 1 for a small model on the CPU, else torch's own)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--api-key-env", default=None, metavar="NAME",
                   help="require `Authorization: Bearer <key>` on every route but /health, the key read from the "
                        "environment variable NAME (never from the command line, which others can see)")
    return p


def parse_adapters(specs: list[str]) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: --adapter takes NAME=DIR, got '{spec}'")
        if name in adapters:
            raise SystemExit(f"error: two adapters are named '{name}'")
        adapters[name] = path
    return adapters


SMALL_MODEL_PARAMS = 100_000_000
SWITCH_INTERVAL_S = 0.0005


def cpu_threads(served, requested: int) -> int:
    """Threads for torch's CPU kernels. A small model's matrices are too small to split: one thread is
    as fast alone and several times faster when other processes share the cores (measured on demo-tiny:
    88 tokens/s with 1 thread against 14-22 with 2, on 2 busy cores), so that is the default for it."""
    import torch

    if requested > 0:
        torch.set_num_threads(requested)
    elif served.device == "cpu" and sum(p.numel() for p in served.model.parameters()) < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    adapters = parse_adapters(args.adapter)
    api_key = os.environ.get(args.api_key_env or "") if args.api_key_env else None
    if args.api_key_env and not api_key:
        print(f"error: --api-key-env {args.api_key_env}: that environment variable is not set (or empty); "
              "set it to the key clients must send.", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("studio.serving.server")
    import uvicorn

    from studio.serving.server.app import create_app
    from studio.serving.server.engine import Engine
    from studio.serving.server.model import LoadError, load

    log.info("loading %s with adapters %s", args.model, list(adapters) or "none")
    try:
        served = load(args.model, adapters, served_name=args.served_name, quantize=args.quantize,
                      dtype=args.dtype, max_total_tokens=args.max_total_tokens)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads = cpu_threads(served, args.threads)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    engine = Engine(served, max_batch_size=args.max_batch_size, max_batch_rows=args.max_batch_rows,
                    prefill_chunk=args.prefill_chunk)
    app = create_app(served, engine, max_concurrent_requests=args.max_concurrent_requests, api_key=api_key)
    log.info("serving %s on http://%s:%d (%s, %s, %d torch threads, adapters: %s)", served.served_name, args.host,
             args.port, served.device, served.dtype, threads, ", ".join(served.adapters) or "none")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
