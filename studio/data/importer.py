"""Import: the one path from an uploaded file to a dataset version, used by the Data tab, the CLI and tests.

Two steps for the UI — `inspect_file` (read + guess the mapping, shown for confirmation), then
`prepare` (render, count, check, split: the preview and the report) and `save` — and `import_file`
that does all of it for the CLI and for scripts.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from studio.core.errors import InvalidInput
from studio.data import preference
from studio.data.ingest import read_table, release_memory
from studio.data.mapping import MappingGuess, build_conversations, check_mapping, guess_mapping
from studio.data.split import Outcome, content_hash, rejected_frame, seeded_split, uploaded_split
from studio.data.table import SourceTable

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from studio.core.workspace import Workspace
    from studio.data.store import DatasetVersion

DEFAULT_BASE_MODEL = "demo-tiny"
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SEED = 42
MAX_DEFAULT_LENGTH = 2048  # the default max length: the model's context, but no more than this
PREVIEW_ROWS = 3
LengthPolicy = Literal["drop", "truncate"]


@dataclass
class Inspection:
    """Step 1: the file as read, and the mapping guess to confirm."""

    table: SourceTable
    guess: MappingGuess

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.table.describe(), "guess": self.guess.to_dict(), "sample": self.table.sample()}


@dataclass
class Prepared:
    """Step 2: what would be saved — the split conversations, the report, the rejected rows, a preview."""

    name: str
    train: pa.ListArray
    val: pa.ListArray
    report: dict[str, Any]
    rejected: pd.DataFrame
    previews: list[dict[str, Any]]
    content_hash: str
    fields: dict[str, Any] = field(default_factory=dict)  # the registry columns of the version
    template_text: str = ""
    kind: str = "sft"  # sft: train/val are chats; preference/kto: lists of rows (studio.data.kinds)

    @property
    def usable(self) -> bool:
        return len(self.train) > 0

    def rejected_csv(self) -> bytes:
        """rejected.csv: UTF-8 with a BOM so that Excel shows accents right."""
        return self.rejected.to_csv(index=False).encode("utf-8-sig")


@dataclass
class ImportResult:
    version: DatasetVersion | None  # None for a dry run
    created: bool
    prepared: Prepared
    guess: MappingGuess
    mapping: dict[str, str]

    @property
    def report(self) -> dict[str, Any]:
        return self.prepared.report


def inspect_file(path: str | Path, *, sheet: str | None = None, header: bool | None = None,
                 max_bytes: int | None = None, name: str | None = None) -> Inspection:
    table = read_table(path, sheet=sheet, header=header, max_bytes=max_bytes, name=name)
    return Inspection(table, preference.guess(table) or guess_mapping(table))


def default_max_length(ws: Workspace, base_model: str, tokenizer) -> int:
    """The model's context length (catalog, else the tokenizer's), capped at MAX_DEFAULT_LENGTH."""
    from studio.models.catalog import catalog_entry

    entry = catalog_entry(base_model)
    context = entry.context if entry else getattr(tokenizer, "model_max_length", 0) or 0
    return min(int(context), MAX_DEFAULT_LENGTH) if 0 < context < 10**7 else MAX_DEFAULT_LENGTH


def prepare(
    ws: Workspace,
    table: SourceTable,
    mapping: dict[str, str | None],
    *,
    system_prompt: str | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    template: str | None = None,
    max_length: int | None = None,
    length_policy: LengthPolicy = "drop",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_size: int | None = None,
    val_table: SourceTable | None = None,
    seed: int = DEFAULT_SEED,
    name: str | None = None,
    preview_rows: int = PREVIEW_ROWS,
) -> Prepared:
    """Render, count, check and split; nothing is written. A result with no training rows is returned
    (with its report and rejected rows) but `save` refuses it."""
    import pyarrow as pa

    from studio.data.checks import check_conversations
    from studio.data.render import preview_tokens

    if preference.kind_of_mapping(mapping or {}) != "sft":
        if val_table is not None:
            raise InvalidInput("A separate validation file is not read for preference data.",
                               "Leave it out: the validation rows are drawn from the file (set their share).")
        tokenizer, template, max_length = _tokenizer(ws, base_model, template, max_length)
        return Prepared(**preference.prepare(
            table, {r: c for r, c in mapping.items() if c}, tokenizer, template=template, max_length=max_length,
            base_model=base_model, model_context=_model_context(base_model, tokenizer), seed=seed,
            preview_rows=preview_rows, system_prompt=system_prompt, length_policy=length_policy,
            val_fraction=val_fraction, val_size=val_size, name=name))
    mapping = check_mapping(table, mapping)
    if length_policy not in ("drop", "truncate"):
        raise InvalidInput(f"'{length_policy}' is not a policy for long rows.", "Use drop or truncate.")
    if val_size is None and not 0 <= val_fraction < 1:
        raise InvalidInput(f"The validation fraction {val_fraction} is not between 0 and 1.",
                           "Use e.g. 0.1 for one row in ten.")
    if val_size is not None and val_size < 0:
        raise InvalidInput(f"The validation size {val_size} is negative.", "Use a number of rows, e.g. 20.")
    tokenizer, template, max_length = _tokenizer(ws, base_model, template, max_length)

    def check(source: SourceTable, source_mapping: dict[str, str]):
        return check_conversations(
            tokenizer, build_conversations(source, source_mapping, system_prompt), max_length=max_length,
            length_policy=length_policy, row_numbers=source.rows, row_label=source.row_label,
        )

    outcome = Outcome({"data": table, "validation": val_table})
    main = outcome.add("data", check(table, mapping))
    release_memory()
    if val_table is None:
        split = seeded_split(main, val_fraction=val_fraction, val_size=val_size, seed=seed)
    else:
        try:
            val_mapping = check_mapping(val_table, mapping)
        except InvalidInput as exc:
            raise InvalidInput(f"Validation file: {exc.message}", exc.fix) from exc
        split = uploaded_split(main, outcome.add("validation", check(val_table, val_mapping)), outcome,
                                val_table.name)
    release_memory()
    report = {
        "source": table.describe(), "validation_source": split.source,
        "validation_file": val_table.describe() if val_table is not None else None,
        "mapping": mapping, "system_prompt": (system_prompt or "").strip(),
        "base_model": base_model, "template": template, "max_length": max_length,
        "length_policy": length_policy, "seed": seed,
        "rows_in": sum(len(t.frame) + len(t.unreadable) for t in (table, val_table) if t is not None),
        "rows_train": len(split.train), "rows_val": len(split.val), "rows_rejected": outcome.rejected_count(),
        "model_context": _model_context(base_model, tokenizer),
        **outcome.report(split, max_length, table.row_label),
    }
    previews = [
        {"row": int(table.rows[split.train_index[i]]), "row_label": table.row_label,
         **preview_tokens(tokenizer, split.train[i].as_py())}
        for i in range(min(preview_rows, len(split.train)))
    ]
    template_text = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else json.dumps(
        tokenizer.chat_template)
    settings = {"base_model": base_model, "template": template,
                "template_sha256": hashlib.sha256(template_text.encode()).hexdigest(),
                "max_length": max_length, "length_policy": length_policy}
    fields = {
        "source_name": table.name, "source_format": table.format, "base_model": base_model, "template": template,
        "mapping": mapping, "system_prompt": (system_prompt or "").strip(), "max_length": max_length,
        "rows_rejected": outcome.rejected_count(), "report": report,
    }
    return Prepared(
        name=(name or Path(table.name).stem).strip() or "dataset",
        train=split.train, val=split.val if len(split.val) else pa.array([], split.train.type),
        report=report, rejected=rejected_frame(outcome.rejected, outcome.tables), previews=previews,
        content_hash=content_hash(settings, split.train, split.val), fields=fields, template_text=template_text,
    )


def _tokenizer(ws: Workspace, base_model: str, template: str | None, max_length: int | None):
    """The base model's tokenizer with the chosen chat template set, the template's name, the max length."""
    from studio.data.templates import TEMPLATE_CHOICES, apply_template, default_template
    from studio.models.resolve import load_tokenizer

    tokenizer = load_tokenizer(ws, base_model)
    template = (template or "").strip() or default_template(tokenizer)
    if template not in TEMPLATE_CHOICES:
        raise InvalidInput(f"'{template}' is not a chat template this studio knows.",
                           f"Use one of: {', '.join(TEMPLATE_CHOICES)}.")
    apply_template(tokenizer, template)
    max_length = int(max_length) if max_length else default_max_length(ws, base_model, tokenizer)
    if max_length < 16:
        raise InvalidInput(f"A max length of {max_length} tokens leaves no room for a conversation.",
                           "Use at least 16 tokens; 512 to 2048 is usual.")
    return tokenizer, template, max_length


def _model_context(base_model: str, tokenizer) -> int | None:
    from studio.models.catalog import catalog_entry

    entry = catalog_entry(base_model)
    if entry:
        return entry.context
    length = getattr(tokenizer, "model_max_length", 0) or 0
    return int(length) if 0 < length < 10**7 else None


def save(ws: Workspace, prepared: Prepared, name: str | None = None) -> tuple[DatasetVersion, bool]:
    """Write the version (or find the one with the same content): returns (version, created)."""
    import datasets
    import pyarrow as pa

    from studio.data import store

    if not prepared.usable:
        raise InvalidInput(no_rows_message(prepared.report), "Fix the rows listed in rejected.csv and upload again.")
    extra = {"chat_template.jinja": prepared.template_text.encode()}
    try:
        extra["histogram.png"] = _figure_png(prepared.report)
    except Exception:  # a missing font or backend must not stop the save: the data is what matters
        pass
    if prepared.kind == "sft":
        train = datasets.Dataset(pa.table({"messages": prepared.train}))
        val = datasets.Dataset(pa.table({"messages": prepared.val}))
    else:
        train = datasets.Dataset.from_list(prepared.train)
        val = datasets.Dataset.from_list(prepared.val) if prepared.val else train.select([])
    return store.save_version(
        ws, content_hash=prepared.content_hash, name=(name or prepared.name).strip() or prepared.name,
        train=train, val=val,
        rejected_csv=prepared.rejected_csv() if len(prepared.rejected) else None,
        extra_files=extra, **prepared.fields,
    )


def _figure_png(report: dict[str, Any]) -> bytes:
    from studio.data.report import figure

    buffer = io.BytesIO()
    figure(report).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def no_rows_message(report: dict[str, Any]) -> str:
    worst = sorted((c for c in report["checks"] if c["action"] == "rejected"), key=lambda c: -c["count"])
    why = "; ".join(f"{c['count']} {c['check']}" for c in worst[:4]) or "no rows were read"
    return f"No training rows are left after the checks ({report['rows_in']} read: {why})."


def parse_map_flags(values: list[str] | None) -> dict[str, str] | None:
    """--map ROLE=COLUMN flags as a mapping (None when none were given)."""
    if not values:
        return None
    mapping = {}
    for value in values:
        role, sep, column = value.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise InvalidInput(f"--map {value!r} is not ROLE=COLUMN.", "For example: --map output=Answer.")
        mapping[role.strip().lower()] = column.strip()
    return mapping


def import_file(
    ws: Workspace,
    path: str | Path,
    mapping: dict[str, str] | None = None,
    *,
    system_prompt: str | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    template: str | None = None,
    max_length: int | None = None,
    length_policy: LengthPolicy = "drop",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_size: int | None = None,
    val_file: str | Path | None = None,
    seed: int = DEFAULT_SEED,
    name: str | None = None,
    sheet: str | None = None,
    header: bool | None = None,
    max_bytes: int | None = None,
    dry_run: bool = False,
) -> ImportResult:
    """Read, map (the given mapping, or a confident guess), check, split and save a file in one call.

    Without a mapping the guess is used only when it is confident; otherwise InvalidInput lists the
    columns and the guess, so the caller can pass `mapping` (CLI: --map ROLE=COLUMN).
    """
    inspection = inspect_file(path, sheet=sheet, header=header, max_bytes=max_bytes)
    guess = inspection.guess
    if mapping is None:
        if not guess.confident:
            table = inspection.table
            suggestion = " ".join(f"--map {r}={c!r}" for r, c in guess.mapping.items()) or "--map instruction=... " \
                                                                                           "--map output=..."
            other_sheets = [s for s in table.sheets if s != table.sheet]
            sheets = (f" (sheet {table.sheet!r}; the workbook also has {', '.join(repr(s) for s in other_sheets)}: "
                      "choose one with --sheet)") if other_sheets else ""
            raise InvalidInput(
                f"The columns of '{table.name}'{sheets} could not be matched with confidence: "
                f"{', '.join(repr(c) for c in table.columns)}. {' '.join(guess.notes)}",
                f"Say which column is which, e.g. {suggestion}.",
            )
        mapping = guess.mapping
    val_table = read_table(val_file, sheet=sheet, max_bytes=max_bytes) if val_file else None
    prepared = prepare(
        ws, inspection.table, mapping, system_prompt=system_prompt, base_model=base_model, template=template,
        max_length=max_length, length_policy=length_policy, val_fraction=val_fraction, val_size=val_size,
        val_table=val_table, seed=seed, name=name,
    )
    if dry_run:
        return ImportResult(None, False, prepared, guess, prepared.fields["mapping"])
    version, created = save(ws, prepared, name)
    return ImportResult(version, created, prepared, guess, prepared.fields["mapping"])


def preview_version(ws: Workspace, dataset_id: str, rows: int = PREVIEW_ROWS) -> list[dict[str, Any]]:
    """A saved version's first training rows, rendered with the template and tokenizer it was saved with."""
    from studio.data.render import preview_tokens
    from studio.data.store import get_version, load_split
    from studio.data.templates import apply_template
    from studio.models.resolve import load_tokenizer

    version = get_version(ws, dataset_id)
    tokenizer = apply_template(load_tokenizer(ws, version.base_model or DEFAULT_BASE_MODEL), version.template)
    split = load_split(ws, dataset_id, "train")
    if version.kind != "sft":
        return [{"row": i + 1, "row_label": f"{which} answer, training row",
                 **preview_tokens(tokenizer, split[i]["prompt"] + answer)}
                for i in range(min(rows, len(split))) for which, answer in preference.answers_of(split[i])]
    return [{"row": i + 1, "row_label": "training row", **preview_tokens(tokenizer, split[i]["messages"])}
            for i in range(min(rows, len(split)))]
