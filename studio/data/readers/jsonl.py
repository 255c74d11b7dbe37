"""JSON lines and JSON (a list of records, or one object holding that list); a list of conversations
becomes a `messages` column. Refusals name the line or record. JSON lines stream in batches of lines; a JSON
document is one value, so it is read whole (the upload limit bounds it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from studio.core.errors import InvalidInput
from studio.data.table import (
    MAX_COLUMNS,
    SourceTable,
    check_names,
    join,
    sniff_encoding,
    text_cell,
    text_column,
)


def read(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None,
         header: bool | None = None) -> SourceTable:
    """`sheet` and `header` do not apply to JSON (keys are the columns)."""
    return join(list(stream(path, name, head, fmt)))


def stream(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None, header: bool | None = None,
           batch_rows: int = 50_000, encoding: str | None = None) -> Iterator[SourceTable]:
    encoding = encoding or sniff_encoding(head) or "utf-8"
    if fmt != "jsonl":
        yield _json_document(path, name, encoding)
        return
    columns: dict[str, None] = {}
    records: list[Any] = []
    rows: list[int] = []
    number = 0
    try:
        with path.open(encoding=encoding, newline="") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"Line {number} of '{name}' is not valid JSON: {exc.msg} (column {exc.colno}).",
                                       "Each line of a JSONL file must be one complete JSON object.") from exc
                rows.append(number)
                if len(records) >= batch_rows:
                    yield _table(records, rows, columns, name, fmt, "line", encoding)
                    records, rows = [], []
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"'{name}' is not valid {encoding} text (after line {number}, byte {exc.start}).",
                           "Save the file as UTF-8.") from exc
    if records or not columns:
        if not records and not columns:
            raise InvalidInput(f"'{name}' holds no records.", "Add records and upload again.")
        yield _table(records, rows, columns, name, fmt, "line", encoding)


def _json_document(path: Path, name: str, encoding: str) -> SourceTable:
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"'{name}' is not valid {encoding} text (byte {exc.start}).",
                           "Save the file as UTF-8.") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"'{name}' is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
                           "Fix the file there, or export it again.") from exc
    if isinstance(data, dict):  # {"data": [...]} or {"rows": [...]}: the one list of records inside
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InvalidInput(f"'{name}' holds one JSON object, not a list of records.",
                               "Save a list of records: [{\"question\": ..., \"answer\": ...}, ...].")
        data = lists[0]
    if not isinstance(data, list):
        raise InvalidInput(f"'{name}' holds a single JSON value, not a list of records.",
                           "Save a list of records: [{\"question\": ..., \"answer\": ...}, ...].")
    if not data:
        raise InvalidInput(f"'{name}' holds no records.", "Add records and upload again.")
    return _table(data, list(range(1, len(data) + 1)), {}, name, "json", "record", encoding)


def _table(records: list[Any], rows: list[int], columns: dict[str, None], name: str, fmt: str, label: str,
           encoding: str) -> SourceTable:
    """One batch of records as a table; `columns` (the keys seen so far, in order) grows with each batch."""
    if records and all(isinstance(r, list) for r in records):  # a list of conversations, each a list of messages
        records = [{"messages": r} for r in records]
    for row, rec in zip(rows, records, strict=True):
        if not isinstance(rec, dict):
            raise InvalidInput(f"{label.title()} {row} of '{name}' is a {type(rec).__name__}, not an object.",
                               "Every record must be an object like {\"question\": ..., \"answer\": ...}.")
    for rec in records:
        columns.update(dict.fromkeys(rec))
    if len(columns) > MAX_COLUMNS:
        raise InvalidInput(f"'{name}' has {len(columns)} different keys; at most {MAX_COLUMNS} are read.",
                           "Keep only the fields with the questions, answers and context.")
    check_names([str(c) for c in columns], name)
    data = {str(c): [text_cell(rec.get(c), keep_lists=True) for rec in records] for c in columns}
    frame = pd.DataFrame({c: text_column(v) for c, v in data.items()})
    return SourceTable(frame=frame, rows=np.asarray(rows, dtype=np.int64), name=name, format=fmt,
                       row_label=label, encoding=encoding)
