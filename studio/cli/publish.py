"""`studio publish RUN --target local|vllm|tgi-docker|vllm-docker|sglang-docker|remote|hub|inference-endpoint`: export,
deploy, verify and record, as the Publish tab's button does. `--dry-run` shows the plan only.

Exit codes: 0 published (healthy, or waiting for you to start it), 3 published but the verification
failed (unhealthy), 2 refused (bad input, unfinished run, unreachable server...).
The options are those of the targets (studio/publish/targets.py, hub.py); each flag applies to the
targets that have it, and a flag the chosen target lacks is refused with a message.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from studio.cli import Output
from studio.core.argtypes import PORT

TARGETS = ("local", "vllm", "tgi-docker", "vllm-docker", "sglang-docker", "remote", "hub", "inference-endpoint")
# flag -> (type, help). Mirrors the target option models' fields; the models validate the values.
FLAGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "name": (str, "local / *-docker: a name for the deployment (publishing again under it replaces); "
                  "vllm: the name clients ask for (default: the run's name); inference-endpoint: its name"),
    "port": (PORT, "local / vllm: the port here; *-docker: the host port mapped to the container's (TGI 80, "
                  "vLLM 8000, SGLang 30000)"),
    "max_model_len": (int, "vllm: --max-model-len, prompt + answer tokens (default: derived from the data)"),
    "quantize": (str, "local: none|4bit; tgi-docker: a TGI --quantize value (bitsandbytes-nf4, awq, ...)"),
    "image": (str, "*-docker: the engine image; inference-endpoint: the TGI image"),
    "tag": (str, "*-docker: the engine image tag; inference-endpoint: the TGI image tag"),
    "gpus": (str, "*-docker: Docker's --gpus value ('all', a count, 'device=0'; '' for none)"),
    "host": (str, "*-docker: the address the port is published on (default 127.0.0.1)"),
    "max_input_tokens": (int, "tgi-docker: override the prompt limit derived from the data"),
    "max_total_tokens": (int, "*-docker: override the prompt + answer limit derived from the data"),
    "timeout": (float, "vllm / *-docker / remote / inference-endpoint: seconds to wait"),
    "url": (str, "remote: the server's address, like http://host:8080"),
    "api_key": (str, "remote: the server's API key; *-docker: the key the server will require (never stored)"),
    "model_name": (str, "remote: the name the server knows the adapter or model by (default: the run's name)"),
    "engine": (str, "remote: auto|tgi|vllm|sglang"),
    "repo_id": (str, "hub / inference-endpoint: the model repo, 'name' or 'org/name'"),
    "token": (str, "hub / inference-endpoint: a Hub token with write access (default: HF_TOKEN; never stored)"),
    "endpoint": (str, "hub / inference-endpoint: the Hub's address (default: HF_ENDPOINT or huggingface.co)"),
    "namespace": (str, "inference-endpoint: the owning account or organisation"),
    "vendor": (str, "inference-endpoint: aws|gcp|azure"),
    "region": (str, "inference-endpoint: e.g. us-east-1"),
    "accelerator": (str, "inference-endpoint: gpu|cpu"),
    "instance_type": (str, "inference-endpoint: e.g. nvidia-a10g, nvidia-l4"),
    "instance_size": (str, "inference-endpoint: x1, x2, x4..."),
    "scale_to_zero_minutes": (int, "inference-endpoint: idle minutes before it scales to zero (0: never)"),
    "max_replica": (int, "inference-endpoint: the most replicas"),
    "poll": (float, "inference-endpoint: seconds between status checks"),
}
BOOL_FLAGS = {
    "merged": "serve/push the merged model (default) or, with --no-merged, the base model plus the adapter",
    "private": "hub / inference-endpoint: keep the repo private (default) or --no-private",
    "serve_check": "hub: serve the pushed files here and verify their replies (default on)",
}


def register(verbs, common) -> None:
    p = verbs.add_parser("publish", parents=[common], help="export a finished run, deploy it, verify it",
                         description=__doc__.splitlines()[0])
    p.add_argument("run", help="the id of a run that succeeded (see `studio runs list`)")
    p.add_argument("--target", "-t", choices=TARGETS, default="local", help="where to publish (default: local)")
    p.add_argument("--dry-run", action="store_true", help="show what would happen (command, repo, limits) only")
    p.add_argument("--fresh-export", action="store_true", help="export again even if an export of this run exists")
    for name, (kind, help_text) in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=help_text)
    for name, help_text in BOOL_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                       default=None, help=help_text)
    p.set_defaults(handler=run)


def options_from_args(args) -> dict:
    names = list(FLAGS) + list(BOOL_FLAGS)
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)


def format_plan(plan: dict) -> str:
    what = "the merged model" if plan["export_kind"] == "merged" else "the adapter"
    lines = [f"Publish to {plan['target']} ({plan['slot']}), exporting {what}:"]
    lines += [f"  {n}. {step}" for n, step in enumerate(plan["steps"], 1)]
    if plan.get("limits"):
        lim = plan["limits"]
        lines.append(f"Token limits: --max-input-tokens {lim['max_input_tokens']} --max-total-tokens "
                     f"{lim['max_total_tokens']} (from {lim['basis']})")
    if plan.get("command_text"):
        lines.append(f"Command:\n  {plan['command_text']}")
    for name, content in plan.get("files", {}).items():
        lines.append(f"{name}:\n" + "\n".join("  " + ln for ln in content.splitlines()))
    lines += [f"Note: {n}" for n in plan.get("notes", [])]
    return "\n".join(lines)


def run(args, ws) -> Output:
    from studio.publishing import pipeline
    from studio.publishing.deployments import curl_example, format_deployment

    options = options_from_args(args)
    if args.dry_run:
        plan = pipeline.preview(ws, args.run, args.target, options).to_dict()
        return Output(plan, format_plan(plan))
    dep = pipeline.publish(ws, args.run, args.target, options, progress=_progress, fresh_export=args.fresh_export)
    return finish(args, dep.to_dict() | {"curl": curl_example(dep)}, format_deployment(dep), dep.status)


def finish(args, data: dict, text: str, status: str) -> Output:
    """The result; an unhealthy deployment exits with code 3, so scripts notice."""
    return Output(data, text, code=3 if status == "unhealthy" else 0)
