"""`studio data`: import a spreadsheet as a checked dataset version; list, show, rename and delete versions.

The same core calls as the Data tab (studio.data.importer and studio.data.store).
"""

from __future__ import annotations

import argparse

from studio.cli import Output
from studio.core.argtypes import whole

ROLES = "instruction, input, output, system, messages"


def register(verbs, common) -> None:
    p = verbs.add_parser("data", parents=[common], help="import, check and manage training data")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    imp = sub.add_parser(
        "import", parents=[common], help="import a CSV/TSV/JSONL/JSON/Parquet/XLSX file as a dataset version",
        description="Read FILE, map its columns, render every row with the base model's chat template, check it "
                    "and save an immutable dataset version. Without --map the guessed mapping is used (and "
                    "printed) when it is confident; otherwise the command stops and lists the columns.",
    )
    imp.add_argument("file", help="the spreadsheet or JSON file")
    imp.add_argument("--map", action="append", metavar="ROLE=COLUMN", dest="map",
                     help=f"which column plays which role ({ROLES}); repeat the flag for each role")
    imp.add_argument("--system", default=None, metavar="TEXT", help="a fixed system prompt for every row")
    imp.add_argument("--base-model", default="demo-tiny", metavar="M",
                     help="the model whose tokenizer and chat template are used (default: demo-tiny)")
    imp.add_argument("--template", default=None, choices=["model", "chatml", "alpaca"],
                     help="chat template: the model's own (default when it has one) or a fallback")
    imp.add_argument("--max-length", type=int, default=None, metavar="N",
                     help="longest conversation in tokens (default: the model's context, at most 2048)")
    imp.add_argument("--truncate", action="store_true",
                     help="cut answers of rows over the max length instead of dropping those rows")
    val = imp.add_mutually_exclusive_group()
    val.add_argument("--val", type=float, default=0.1, metavar="FRACTION",
                     help="share of rows held out for validation (default 0.1)")
    val.add_argument("--val-size", type=int, default=None, metavar="ROWS", help="number of validation rows")
    val.add_argument("--val-file", default=None, metavar="FILE", help="a separate validation file (same columns)")
    imp.add_argument("--seed", type=int, default=42, help="seed of the train/validation split (default 42)")
    imp.add_argument("--name", default=None, help="a name for the version (default: the file name)")
    imp.add_argument("--sheet", default=None, help="XLSX: the sheet to read (default: the first)")
    header = imp.add_mutually_exclusive_group()
    header.add_argument("--header", dest="header", action="store_const", const=True, default=None,
                        help="the first row holds the column names (default: sniffed)")
    header.add_argument("--no-header", dest="header", action="store_const", const=False,
                        help="the first row is data, not column names")
    imp.add_argument("--dry-run", action="store_true", help="check and report, but save nothing")
    imp.set_defaults(handler=run_import)

    ls = sub.add_parser("list", parents=[common], help="list the saved dataset versions")
    ls.set_defaults(handler=run_list)

    show = sub.add_parser("show", parents=[common], help="show a version: its report and a rendered preview")
    show.add_argument("id", help="the version id (ds-...)")
    show.add_argument("--rows", type=whole(0), default=2, help="how many rows to preview (default 2)")
    show.set_defaults(handler=run_show)

    rename = sub.add_parser("rename", parents=[common], help="rename a version")
    rename.add_argument("id")
    rename.add_argument("name")
    rename.set_defaults(handler=run_rename)

    rm = sub.add_parser("rm", parents=[common], help="delete a version (refused while a run uses it)")
    rm.add_argument("id")
    rm.set_defaults(handler=run_rm)


def preview_text(preview: dict) -> str:
    """A rendered conversation with the trained tokens (the answers) between ⟦ and ⟧."""
    out, inside = [], False
    for piece in preview["pieces"]:
        if piece["trained"] != inside:
            out.append("⟦" if piece["trained"] else "⟧")
            inside = piece["trained"]
        out.append(piece["text"])
    if inside:
        out.append("⟧")
    return (f"--- {preview['row_label']} {preview['row']}: {preview['tokens']} tokens, "
            f"{preview['trained_tokens']} trained (between ⟦ ⟧) ---\n" + "".join(out))


def run_import(args: argparse.Namespace, ws) -> Output:
    from studio.data.importer import import_file, parse_map_flags
    from studio.data.report import as_text

    mapping = parse_map_flags(args.map)
    result = import_file(
        ws, args.file, mapping, system_prompt=args.system, base_model=args.base_model, template=args.template,
        max_length=args.max_length, length_policy="truncate" if args.truncate else "drop",
        val_fraction=args.val, val_size=args.val_size, val_file=args.val_file, seed=args.seed, name=args.name,
        sheet=args.sheet, header=args.header, dry_run=args.dry_run,
    )
    used = ", ".join(f"{role}={column!r}" for role, column in result.mapping.items())
    lines = [f"Columns: {used}" + ("" if mapping else " (guessed from the column names)")]
    lines.append(as_text(result.report))
    for preview in result.prepared.previews[:1 if result.prepared.kind == "sft" else 2]:  # both answers of a pair
        lines.append(preview_text(preview))
    version = result.version
    if version is None:
        lines.append("Dry run: nothing was saved.")
    elif result.created:
        lines.append(f"Saved dataset version {version.id} ('{version.name}') in {version.path}")
    else:
        lines.append(f"This content is already saved as {version.id} ('{version.name}'); nothing new was written.")
    if version is not None and version.rows_rejected:
        lines.append(f"Rejected rows and their reasons: {version.path}/rejected.csv")
    data = {
        "version": version.model_dump() if version else None, "created": result.created,
        "mapping": result.mapping, "guess": result.guess.to_dict(), "report": result.report,
    }
    return Output(data, "\n".join(lines))


def run_list(args, ws) -> Output:
    from studio.core import timetext
    from studio.data.store import list_versions

    versions = list_versions(ws)
    if not versions:
        return Output([], "No dataset versions yet. Import one: studio data import assets/samples/support_faq.csv")
    rows = [f"{'ID':<16} {'NAME':<24} {'TRAIN':>7} {'VAL':>6} {'REJ':>5}  {'MODEL':<20} CREATED"]
    for v in versions:
        rows.append(f"{v.id:<16} {v.name[:24]:<24} {v.rows_train:>7} {v.rows_val:>6} {v.rows_rejected:>5}  "
                    f"{v.base_model[:20]:<20} {timetext.short(v.created_at)}")
    return Output([v.model_dump(exclude={"report"}) for v in versions], "\n".join(rows))


def run_show(args, ws) -> Output:
    from studio.core import timetext
    from studio.data.importer import preview_version
    from studio.data.report import as_text
    from studio.data.store import get_version

    version = get_version(ws, args.id)
    previews = preview_version(ws, args.id, rows=max(args.rows, 0))
    mapping = ", ".join(f"{r}={c!r}" for r, c in version.mapping.items())
    lines = [
        f"{version.id}  '{version.name}'  created {timetext.moment(version.created_at)}",
        f"From {version.source_name} ({version.source_format}); columns {mapping}; "
        f"system prompt: {version.system_prompt or '(none)'}",
        f"Folder: {version.path}",
        as_text(version.report) if version.report else "",
        *[preview_text(p) for p in previews],
    ]
    data = {**version.model_dump(), "preview": [{k: p[k] for k in ("row", "text", "tokens", "trained_tokens")}
                                                for p in previews]}
    return Output(data, "\n".join(line for line in lines if line))


def run_rename(args, ws) -> Output:
    from studio.data.store import rename_version

    version = rename_version(ws, args.id, args.name)
    return Output(version.model_dump(exclude={"report"}), f"{version.id} is now called '{version.name}'.")


def run_rm(args, ws) -> Output:
    from studio.data.store import delete_version

    delete_version(ws, args.id)
    return Output({"deleted": args.id}, f"Deleted {args.id}.")
