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

import numpy as np

from studio.data.ingest import SourceTable, read_table, release_memory
from studio.data.mapping import MappingGuess, build_conversations, check_mapping, guess_mapping
from studio.errors import InvalidInput

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from studio.data.store import DatasetVersion
    from studio.workspace import Workspace

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
    return Inspection(table, guess_mapping(table))


def default_max_length(ws: Workspace, base_model: str, tokenizer) -> int:
    """The model's context length (catalog, else the tokenizer's), capped at MAX_DEFAULT_LENGTH."""
    from studio.models import catalog_entry

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

    from studio.data.checks import check_conversations, leaked, split_rows
    from studio.data.render import preview_tokens
    from studio.data.report import check_entry, histogram, token_stats
    from studio.data.templates import TEMPLATE_CHOICES, apply_template, default_template
    from studio.models import load_tokenizer

    mapping = check_mapping(table, mapping)
    if length_policy not in ("drop", "truncate"):
        raise InvalidInput(f"'{length_policy}' is not a policy for long rows.", "Use drop or truncate.")
    if val_size is None and not 0 <= val_fraction < 1:
        raise InvalidInput(f"The validation fraction {val_fraction} is not between 0 and 1.",
                           "Use e.g. 0.1 for one row in ten.")
    if val_size is not None and val_size < 0:
        raise InvalidInput(f"The validation size {val_size} is negative.", "Use a number of rows, e.g. 20.")
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

    main = check_conversations(
        tokenizer, build_conversations(table, mapping, system_prompt), max_length=max_length,
        length_policy=length_policy, row_numbers=table.rows, row_label=table.row_label,
    )
    release_memory()
    reasons = {k: [("data", i) for i in v] for k, v in main.reasons.items()}
    warnings = {k: [("data", i) for i in v] for k, v in main.warnings.items()}
    rejected = [("data", i, r) for i, r in main.rejected]
    counted = [main.counted_tokens]
    truncated = [("data", i) for i in main.truncated]
    if val_table is None:
        is_val = split_rows(main.question_keys, val_fraction=val_fraction, val_size=val_size, seed=seed)
        train_pos, val_pos = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        (train, train_index), (val_messages, _) = main.kept.take_messages(train_pos), main.kept.take_messages(val_pos)
        train_tokens, val_tokens = main.tokens[train_pos], main.tokens[val_pos]
        answer_tokens = main.answer_tokens
        keys = main.question_keys
        leaks = leaked(keys.take(pa.array(train_pos)), keys.take(pa.array(val_pos)))
        share = f"{val_size} rows" if val_size is not None else f"{val_fraction:g} of the rows"
        val_source = f"seeded split (seed {seed}, {share})"
    else:
        try:
            val_mapping = check_mapping(val_table, mapping)
        except InvalidInput as exc:
            raise InvalidInput(f"Validation file: {exc.message}", exc.fix) from exc
        val = check_conversations(
            tokenizer, build_conversations(val_table, val_mapping, system_prompt), max_length=max_length,
            length_policy=length_policy, row_numbers=val_table.rows, row_label=val_table.row_label,
        )
        for key, items in val.reasons.items():
            reasons.setdefault(key, []).extend(("validation", i) for i in items)
        for key, items in val.warnings.items():
            warnings.setdefault(key, []).extend(("validation", i) for i in items)
        rejected += [("validation", i, r) for i, r in val.rejected]
        counted.append(val.counted_tokens)
        truncated += [("validation", i) for i in val.truncated]
        leaks = leaked(main.question_keys, val.question_keys)
        for pos in leaks:
            rejected.append(("validation", int(val.kept.index[pos]), "the same question is in the training data"))
        reasons["leaked into validation"] = [("validation", int(val.kept.index[p])) for p in leaks]
        keep_val = np.setdiff1d(np.arange(len(val.kept)), leaks)
        (train, train_index), (val_messages, _) = main.kept.take_messages(np.arange(len(main.kept))), \
            val.kept.take_messages(keep_val)
        train_tokens, val_tokens = main.tokens, val.tokens[keep_val]
        answer_tokens = np.concatenate([main.answer_tokens, val.answer_tokens[keep_val]])
        leaks = np.array([], dtype=np.int64)  # the leaked rows were rejected above
        val_source = f"uploaded file {val_table.name}"

    tables = {"data": table, "validation": val_table}
    release_memory()

    def numbers(items: list[tuple[str, int]]) -> list[int]:
        return [int(tables[src].rows[i]) for src, i in items]

    checks = [check_entry(k, "rejected", numbers(v), table.row_label) for k, v in reasons.items() if v]
    if truncated:
        checks.append(check_entry("too long", "truncated", numbers(truncated), table.row_label))
    if val_table is None and len(leaks):
        checks.append(check_entry("leaked into validation", "warning", [], table.row_label, total=len(leaks)))
    checks += [check_entry(k, "warning", numbers(v), table.row_label) for k, v in warnings.items() if v]
    all_counted = np.concatenate(counted)
    kept_tokens = np.concatenate([train_tokens, val_tokens])
    report = {
        "source": table.describe(), "validation_source": val_source,
        "validation_file": val_table.describe() if val_table is not None else None,
        "mapping": mapping, "system_prompt": (system_prompt or "").strip(),
        "base_model": base_model, "template": template, "max_length": max_length,
        "length_policy": length_policy, "seed": seed,
        "rows_in": len(table.frame) + (len(val_table.frame) if val_table is not None else 0),
        "rows_train": len(train), "rows_val": len(val_messages), "rows_rejected": len(rejected),
        "rows_truncated": len(truncated),
        "tokens": token_stats(kept_tokens), "tokens_train": int(train_tokens.sum()),
        "answer_tokens": token_stats(answer_tokens),
        "histogram": histogram(all_counted, max_length),
        "rows_over_max_length": int((all_counted > max_length).sum()),
        "checks": checks,
        "model_context": _model_context(base_model, tokenizer),
    }
    rejected_frame = _rejected_frame(rejected, tables)
    previews = []
    for position in range(min(preview_rows, len(train))):
        chat = train[position].as_py()
        previews.append({"row": int(table.rows[train_index[position]]), "row_label": table.row_label,
                         **preview_tokens(tokenizer, chat)})
    template_text = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else json.dumps(
        tokenizer.chat_template)
    settings = {"base_model": base_model, "template": template,
                "template_sha256": hashlib.sha256(template_text.encode()).hexdigest(),
                "max_length": max_length, "length_policy": length_policy}
    content_hash = _content_hash(settings, train, val_messages)
    fields = {
        "source_name": table.name, "source_format": table.format, "base_model": base_model, "template": template,
        "mapping": mapping, "system_prompt": (system_prompt or "").strip(), "max_length": max_length,
        "rows_rejected": len(rejected), "report": report,
    }
    return Prepared(
        name=(name or Path(table.name).stem).strip() or "dataset",
        train=train, val=val_messages if len(val_messages) else pa.array([], train.type),
        report=report, rejected=rejected_frame, previews=previews, content_hash=content_hash, fields=fields,
        template_text=template_text,
    )


def _model_context(base_model: str, tokenizer) -> int | None:
    from studio.models import catalog_entry

    entry = catalog_entry(base_model)
    if entry:
        return entry.context
    length = getattr(tokenizer, "model_max_length", 0) or 0
    return int(length) if 0 < length < 10**7 else None


def _rejected_frame(rejected: list[tuple[str, int, str]], tables: dict[str, SourceTable | None]) -> pd.DataFrame:
    """One row per rejected source row: which file, its row number, the reason, then its original cells."""
    import pandas as pd

    parts = []
    for src in ("data", "validation"):
        items = [(i, r) for s, i, r in rejected if s == src]
        table = tables[src]
        if not items or table is None:
            continue
        items.sort()
        index = [i for i, _ in items]
        cells = table.frame.iloc[index].reset_index(drop=True)
        for col in cells.columns:
            if cells[col].dtype == object:
                cells[col] = cells[col].map(lambda v: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False,
                                                                                             default=str))
        head = pd.DataFrame({"file": src, "row": table.rows[index], "reason": [r for _, r in items]})
        parts.append(pd.concat([head, cells], axis=1))
    if not parts:
        return pd.DataFrame(columns=["file", "row", "reason"])
    return pd.concat(parts, ignore_index=True)


def _content_hash(settings: dict[str, Any], train: pa.ListArray, val: pa.ListArray) -> str:
    """sha256 of the settings that shape the rendering and of every message, in order, of both splits."""
    from studio.data.render import field_lists

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for split, messages in (("train", train), ("val", val)):
        offsets, contents = field_lists(messages, "content")
        _, roles = field_lists(messages, "role")
        digest.update(f"\x1d{split}\x1d".encode())
        digest.update(np.asarray(offsets, dtype=np.int64).tobytes())
        for start in range(0, len(contents), 50_000):
            digest.update("\x1f".join(roles.slice(start, 50_000).to_pylist()).encode())
            digest.update("\x1f".join(contents.slice(start, 50_000).to_pylist()).encode())
    return digest.hexdigest()


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
    return store.save_version(
        ws, content_hash=prepared.content_hash, name=(name or prepared.name).strip() or prepared.name,
        train=datasets.Dataset(pa.table({"messages": prepared.train})),
        val=datasets.Dataset(pa.table({"messages": prepared.val})),
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
    from studio.models import load_tokenizer

    version = get_version(ws, dataset_id)
    tokenizer = apply_template(load_tokenizer(ws, version.base_model or DEFAULT_BASE_MODEL), version.template)
    split = load_split(ws, dataset_id, "train")
    return [{"row": i + 1, "row_label": "training row", **preview_tokens(tokenizer, split[i]["messages"])}
            for i in range(min(rows, len(split)))]
