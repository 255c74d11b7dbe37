"""The `studio` command: the same verbs as the tabs, over the same core calls.

Each module in this package adds its verbs with `register(subparsers, common)`; a handler takes
(args, workspace) and returns an Output (data for --json, text for people) or None when it has
printed its own output (a followed stream). StudioError becomes one line on stderr and exit 2;
anything else exit 1, with a traceback only under --debug.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import pkgutil
import sys
import traceback
from dataclasses import dataclass
from typing import Any

from studio.core.errors import StudioError


@dataclass
class Output:
    data: Any
    text: str
    code: int = 0  # the exit status: non-zero for a result scripts must notice (an unhealthy deployment: 3)


def _common_parser() -> argparse.ArgumentParser:
    # SUPPRESS: a flag given after the verb must not be reset by the verb's own default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as one JSON document")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an unexpected error")
    common.add_argument("--home", default=argparse.SUPPRESS,
                        help="the workspace folder (default: $STUDIO_HOME or ~/.llmops-studio)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="studio", description="LLMOps Studio: fine-tune a model on your data, chat with it, publish it.",
    )
    # The same flags before the verb, as actions of their own: set_defaults on the shared `common`
    # actions would reset every verb's value to the default and lose `studio --home X verb`.
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    parser.add_argument("--home", default=None, help="the workspace folder")
    verbs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{module.name}").register(verbs, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb. With --json, stdout carries exactly one JSON document whatever the verb does (the result,
    or {"error": ...} with exit 2); anything a verb prints on the way (progress, a followed run) goes to stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stdout = sys.stdout
    document: Any = None
    code = 0
    try:
        from studio.core.workspace import Workspace

        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            ws = Workspace.open(args.home)
            out = args.handler(args, ws)
        if out is not None:
            document, code = out.data, out.code
            if not args.json:
                print(out.text)
        elif args.json:
            document = {"done": True}
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        document, code = {"error": exc.to_dict()}, 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        document, code = {"error": {"kind": "interrupted", "message": "interrupted", "fix": None}}, 130
    except Exception as exc:  # the edge: one readable line, the rest under --debug
        if args.debug:
            traceback.print_exc()
        print(f"unexpected error: {type(exc).__name__}: {exc} (run again with --debug for details)",
              file=sys.stderr)
        document, code = {"error": {"kind": "unexpected", "message": f"{type(exc).__name__}: {exc}", "fix": None}}, 1
    if args.json:
        print(json.dumps(document, indent=2, default=str), file=stdout, flush=True)
    return code
