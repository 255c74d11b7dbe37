"""`studio doctor`: what the System tab shows."""

from __future__ import annotations

from studio.cli import Output


def register(verbs, common) -> None:
    p = verbs.add_parser("doctor", parents=[common], help="show GPUs, memory, disk, versions, workspace")
    p.set_defaults(handler=run)


def run(args, ws) -> Output:
    from studio.core.system import format_report, report

    facts = report(ws)
    return Output(facts, format_report(facts))
