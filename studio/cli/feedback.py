"""`studio feedback`: the expert's A/B votes, corrections and thumbs as a preference (DPO/ORPO) or KTO dataset,
like the button in the Chat and Evaluate tabs (studio.evaluation.preference_export)."""

from __future__ import annotations

from studio.cli import Output
from studio.core.argtypes import whole


def register(verbs, common) -> None:
    p = verbs.add_parser("feedback", parents=[common], help="turn chat and A/B feedback into preference data")
    sub = p.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    export = sub.add_parser(
        "export", parents=[common], help="save the feedback as a dataset version for DPO/ORPO or KTO",
        description="A blind A/B vote gives a pair (winner chosen, loser rejected), a correction gives a pair "
                    "(your answer chosen, the model's rejected), a thumbs-up/down gives a KTO row. Refused when "
                    "there is too little to train on.",
    )
    export.add_argument("--kind", choices=["preference", "kto"], default="preference",
                        help="preference: chosen/rejected pairs for DPO or ORPO (default); kto: good/bad answers")
    export.add_argument("--min", type=whole(1), default=None, dest="minimum", metavar="N",
                        help="refuse with fewer rows than this (default 8)")
    export.add_argument("--name", default=None, help="a name for the dataset version")
    export.add_argument("--dry-run", action="store_true", help="count what the feedback gives; save nothing")
    export.set_defaults(handler=run_export)


def run_export(args, ws) -> Output:
    from studio.evaluation.preference_export import MIN_ROWS, export

    version, info = export(ws, args.kind, minimum=args.minimum or MIN_ROWS, name=args.name, dry_run=args.dry_run)
    if version is None:
        return Output(info, f"Would save {info['text']}.")
    method = "dpo" if args.kind == "preference" else "kto"
    return Output({"dataset": version.id, **info},
                  f"Saved dataset {version.id} ('{version.name}'): {info['text']}.\n"
                  f"Train on it: studio train --data {version.id} --method {method} --from RUN")
