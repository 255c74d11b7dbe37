"""`python -m studio.serve --model M [--adapter NAME=DIR ...] --port P`: the endpoint process.

Loads the model first, then listens; the studio knows it is ready when GET /health answers 200.
A failure to load is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studio.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="base model: a local folder or a hub id")
    p.add_argument("--served-name", default="", help="the base model's name in /info, /v1/models and `model=`")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="a LoRA adapter folder to serve under NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--quantize", choices=["none", "4bit"], default="none",
                   help="4bit: NF4 weights through bitsandbytes (CUDA only)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bf16 (or fp16) on CUDA, float32 on the CPU")
    p.add_argument("--max-total-tokens", type=int, default=None,
                   help="prompt + answer limit per request (default: the model's context length)")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together at most")
    p.add_argument("--max-concurrent-requests", type=int, default=128,
                   help="requests in flight at most; more get 429 overloaded")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    adapters = parse_adapters(args.adapter)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("studio.serve")
    import uvicorn

    from studio.serve.app import create_app
    from studio.serve.engine import Engine
    from studio.serve.model import LoadError, load

    log.info("loading %s with adapters %s", args.model, list(adapters) or "none")
    try:
        served = load(args.model, adapters, served_name=args.served_name, quantize=args.quantize,
                      dtype=args.dtype, max_total_tokens=args.max_total_tokens)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine = Engine(served, max_batch_size=args.max_batch_size)
    app = create_app(served, engine, max_concurrent_requests=args.max_concurrent_requests)
    log.info("serving %s on http://%s:%d (%s, %s, adapters: %s)", served.served_name, args.host, args.port,
             served.device, served.dtype, ", ".join(served.adapters) or "none")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
