"""JSON lines and JSON (a list of records, or one object holding that list); a list of conversations
becomes a `messages` column. Refusals name the line or record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from studio.core.errors import InvalidInput
from studio.data.table import MAX_COLUMNS, SourceTable, check_names, sniff_encoding, text_cell, text_column


def read(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None,
         header: bool | None = None) -> SourceTable:
    """`sheet` and `header` do not apply to JSON (keys are the columns)."""
    encoding = sniff_encoding(head) or "utf-8"
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"'{name}' is not valid {encoding} text (byte {exc.start}).",
                           "Save the file as UTF-8.") from exc
    records: list[Any]
    if fmt == "jsonl":
        records, rows = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"Line {number} of '{name}' is not valid JSON: {exc.msg} (column {exc.colno}).",
                                   "Each line of a JSONL file must be one complete JSON object.") from exc
            rows.append(number)
        label = "line"
    else:
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
        records, rows, label = data, list(range(1, len(data) + 1)), "record"
    if not records:
        raise InvalidInput(f"'{name}' holds no records.", "Add records and upload again.")
    if all(isinstance(r, list) for r in records):  # a list of conversations, each a list of messages
        records = [{"messages": r} for r in records]
    for row, rec in zip(rows, records, strict=True):
        if not isinstance(rec, dict):
            raise InvalidInput(f"{label.title()} {row} of '{name}' is a {type(rec).__name__}, not an object.",
                               "Every record must be an object like {\"question\": ..., \"answer\": ...}.")
    columns: dict[str, None] = {}
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
