"""Import: the one path from an uploaded file to a dataset version, used by the Data tab, the CLI and tests.

Two steps for the UI — `inspect_file` (read + guess the mapping, shown for confirmation), then
`prepare` (render, count, check, split: the preview and the report) and `save` — and `import_file`
that does all of it for the CLI and for scripts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from studio.core.errors import InvalidInput
from studio.data import preference
from studio.data.ingest import FileSource, open_source, read_table
from studio.data.mapping import MappingGuess, check_mapping, guess_mapping, too_few_columns
from studio.data.table import SourceTable

if TYPE_CHECKING:
    import pandas as pd

    from studio.core.workspace import Workspace
    from studio.data.store import DatasetVersion
    from studio.data.stream import Splits

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
    problem: InvalidInput | None = None  # read fine, but no mapping can make a dataset of it (one column)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.table.describe(), "guess": self.guess.to_dict(), "sample": self.table.sample(),
                "problem": self.problem.to_dict() if self.problem else None}


@dataclass
class Prepared:
    """Step 2: what would be saved — the split conversations, the report, the rejected rows, a preview."""

    name: str
    train: list[dict] | None  # preference/KTO rows; None for question/answer data, which waits in `splits`
    val: list[dict] | None
    report: dict[str, Any]
    rejected: pd.DataFrame
    previews: list[dict[str, Any]]
    content_hash: str
    fields: dict[str, Any] = field(default_factory=dict)  # the registry columns of the version
    template_text: str = ""
    kind: str = "sft"  # sft: the chats are in `splits`; preference/kto: lists of rows (studio.data.kinds)
    splits: Splits | None = None

    @property
    def usable(self) -> bool:
        return (len(self.splits.train) if self.splits is not None else len(self.train or [])) > 0

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
    guess = _guess(table)
    other = None if sheet else sheet_with_data(path, table, guess, header=header, max_bytes=max_bytes, name=name)
    if other:
        table = read_table(path, sheet=other, header=header, max_bytes=max_bytes, name=name)
        guess = _guess(table)
    return Inspection(table, guess, too_few_columns(table))


def _guess(table: SourceTable) -> MappingGuess:
    return preference.guess(table) or guess_mapping(table)


def sheet_with_data(path: str | Path, table: SourceTable, guess: MappingGuess, *, header: bool | None = None,
                    max_bytes: int | None = None, name: str | None = None) -> str | None:
    """A workbook read at its first sheet, whose columns could not be matched: the first other sheet whose
    columns can be (a cover or notes sheet often comes first). None when there is no such sheet."""
    if guess.confident or len(table.sheets) < 2:
        return None
    for other in table.sheets:
        if other == table.sheet:
            continue
        try:
            candidate = read_table(path, sheet=other, header=header, max_bytes=max_bytes, name=name)
        except InvalidInput:  # an empty sheet, or a chart
            continue
        if _guess(candidate).confident:
            return other
    return None


def default_max_length(ws: Workspace, base_model: str, tokenizer) -> int:
    """The model's context length (catalog, else the tokenizer's), capped at MAX_DEFAULT_LENGTH."""
    from studio.models.catalog import catalog_entry

    entry = catalog_entry(base_model)
    context = entry.context if entry else getattr(tokenizer, "model_max_length", 0) or 0
    return min(int(context), MAX_DEFAULT_LENGTH) if 0 < context < 10**7 else MAX_DEFAULT_LENGTH


def prepare(
    ws: Workspace,
    table: SourceTable | FileSource,
    mapping: dict[str, str | None],
    *,
    system_prompt: str | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    template: str | None = None,
    max_length: int | None = None,
    length_policy: LengthPolicy = "drop",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_size: int | None = None,
    val_table: SourceTable | FileSource | None = None,
    seed: int = DEFAULT_SEED,
    name: str | None = None,
    preview_rows: int = PREVIEW_ROWS,
    batch_rows: int | None = None,
) -> Prepared:
    """Render, count, check and split; nothing is written (the kept rows wait in a spool: studio/data/stream.py).
    `table` and `val_table` are whole tables or FileSources, which stream in batches of `batch_rows`
    (STUDIO_IMPORT_BATCH_ROWS); either way the result is the same. A result with no training rows is returned
    (with its report and rejected rows) but `save` refuses it."""
    from studio.data.ingest import ReadAgain, batch_rows_default
    from studio.data.stream import cleanup_when_dropped, prepare_sft

    if preference.kind_of_mapping(mapping or {}) != "sft":
        if val_table is not None:
            raise InvalidInput("A separate validation file is not read for preference data.",
                               "Leave it out: the validation rows are drawn from the file (set their share).")
        table = _whole(table)  # preference rows are checked in Python, whole: the upload limit bounds them
        tokenizer, template, max_length = _tokenizer(ws, base_model, template, max_length)
        return Prepared(**preference.prepare(
            table, {r: c for r, c in mapping.items() if c}, tokenizer, template=template, max_length=max_length,
            base_model=base_model, model_context=_model_context(base_model, tokenizer), seed=seed,
            preview_rows=preview_rows, system_prompt=system_prompt, length_policy=length_policy,
            val_fraction=val_fraction, val_size=val_size, name=name))
    mapping = check_mapping(_head(table), mapping)
    if length_policy not in ("drop", "truncate"):
        raise InvalidInput(f"'{length_policy}' is not a policy for long rows.", "Use drop or truncate.")
    if val_size is None and not 0 <= val_fraction < 1:
        raise InvalidInput(f"The validation fraction {val_fraction} is not between 0 and 1.",
                           "Use e.g. 0.1 for one row in ten.")
    if val_size is not None and val_size < 0:
        raise InvalidInput(f"The validation size {val_size} is negative.", "Use a number of rows, e.g. 20.")
    val_mapping = None
    if val_table is not None:
        try:
            val_mapping = check_mapping(_head(val_table), mapping)
        except InvalidInput as exc:
            raise InvalidInput(f"Validation file: {exc.message}", exc.fix) from exc
    tokenizer, template, max_length = _tokenizer(ws, base_model, template, max_length)
    options = dict(system_prompt=system_prompt, base_model=base_model, template=template, max_length=max_length,
                   length_policy=length_policy, val_fraction=val_fraction, val_size=val_size, seed=seed, name=name,
                   preview_rows=preview_rows, batch_rows=int(batch_rows or batch_rows_default()))
    while True:
        try:
            fields = prepare_sft(ws, table, mapping, val_table, val_mapping, tokenizer,
                                 model_context=_model_context(base_model, tokenizer), **options)
            break
        except ReadAgain:  # a CSV with Windows text past its head: read again from the start, as such
            continue
    prepared = Prepared(**fields)
    cleanup_when_dropped(prepared, fields["splits"].folder)
    return prepared


def _head(source) -> SourceTable:
    return source if isinstance(source, SourceTable) else source.head


def _whole(source) -> SourceTable:
    from studio.data.ingest import ReadAgain
    from studio.data.table import join

    while not isinstance(source, SourceTable):
        try:
            source = join(list(source.batches()))
        except ReadAgain:
            continue
    return source


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

    from studio.data import store

    if not prepared.usable:
        raise InvalidInput(no_rows_message(prepared.report), "Fix the rows listed in rejected.csv and upload again.")
    extra = {"chat_template.jinja": prepared.template_text.encode()}
    try:
        extra["histogram.png"] = _figure_png(prepared.report)
    except Exception:  # a missing font or backend must not stop the save: the data is what matters
        pass
    if prepared.splits is not None:  # streamed from the spool into the version's folder
        train = val = None
    else:
        train = datasets.Dataset.from_list(prepared.train)
        val = datasets.Dataset.from_list(prepared.val) if prepared.val else train.select([])
    return store.save_version(
        ws, content_hash=prepared.content_hash, name=(name or prepared.name).strip() or prepared.name,
        train=train, val=val, write_splits=prepared.splits.write if prepared.splits is not None else None,
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
    batch_rows: int | None = None,
) -> ImportResult:
    """Read, map (the given mapping, or a confident guess), check, split and save a file in one call.

    The file streams in batches of `batch_rows` rows (STUDIO_IMPORT_BATCH_ROWS), so its size is not bounded
    by memory; the mapping is guessed from the first batch. Without a mapping the guess is used only when it is
    confident; otherwise InvalidInput lists the columns and the guess, so the caller can pass `mapping`
    (CLI: --map ROLE=COLUMN).
    """
    source = open_source(path, sheet=sheet, header=header, max_bytes=max_bytes, batch_rows=batch_rows)
    guess = _guess(source.head)
    other = None if sheet or mapping else sheet_with_data(path, source.head, guess, header=header, max_bytes=max_bytes)
    if other:  # the workbook's rows are on another sheet than its first
        source = open_source(path, sheet=other, header=header, max_bytes=max_bytes, batch_rows=batch_rows)
        guess = _guess(source.head)
    if mapping is None:
        if not guess.confident:
            table = source.head
            sft = "messages" not in guess.mapping and preference.kind_of_mapping(guess.mapping) == "sft"
            missing = [r for r in ("instruction", "output") if sft and r not in guess.mapping]
            suggestion = " ".join([f"--map {r}={c!r}" for r, c in guess.mapping.items()]
                                  + [f"--map {r}=COLUMN" for r in missing])
            other_sheets = [s for s in table.sheets if s != table.sheet]
            sheets = (f" (sheet {table.sheet!r}; the workbook also has {', '.join(repr(s) for s in other_sheets)}: "
                      "choose one with --sheet)") if other_sheets else ""
            raise InvalidInput(
                f"The columns of '{table.name}'{sheets} could not be matched with confidence: "
                f"{', '.join(repr(c) for c in table.columns)}. {' '.join(guess.notes)}".strip(),
                f"Say which column is which, e.g. {suggestion}.",
            )
        mapping = guess.mapping
    val_table = open_source(val_file, sheet=sheet, max_bytes=max_bytes, batch_rows=batch_rows) if val_file else None
    prepared = prepare(
        ws, source, mapping, system_prompt=system_prompt, base_model=base_model, template=template,
        max_length=max_length, length_policy=length_policy, val_fraction=val_fraction, val_size=val_size,
        val_table=val_table, seed=seed, name=name, batch_rows=batch_rows,
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
