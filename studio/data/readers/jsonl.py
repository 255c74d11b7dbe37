"""Readers for the structured formats: JSON/JSONL, Parquet and XLSX (CSV/TSV live in studio.data.ingest).

Each returns a SourceTable of text columns (a chat column may hold lists) or raises InvalidInput.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from studio.core.errors import InvalidInput
from studio.data.ingest import MAX_COLUMNS, SourceTable, check_names, header_names, looks_like_header, sniff_encoding

# --- JSON / JSONL ---------------------------------------------------------------------------------


def read_json(path: Path, name: str, head: bytes, fmt: str) -> SourceTable:
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
    data = {str(c): [_cell(rec.get(c), keep_lists=True) for rec in records] for c in columns}
    frame = pd.DataFrame({c: _column(v) for c, v in data.items()})
    return SourceTable(frame=frame, rows=np.asarray(rows, dtype=np.int64), name=name, format=fmt,
                       row_label=label, encoding=encoding)


def _cell(value: Any, keep_lists: bool = False) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list) and keep_lists:  # a chat: a list of messages
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _column(values: list[Any]) -> pd.Series:
    """Text columns as pandas strings; a column holding lists (chat messages) stays as Python objects."""
    if any(isinstance(v, list) for v in values):
        return pd.Series(values, dtype=object)
    return pd.Series(values, dtype="str")


# --- Parquet / XLSX -------------------------------------------------------------------------------


def read_parquet(path: Path, name: str) -> SourceTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"'{name}' is not a readable Parquet file: {str(exc).splitlines()[0]}",
                           "Write it again (pandas: df.to_parquet), or upload CSV.") from exc
    check_names(table.column_names, name)
    frame = pd.DataFrame()
    for col_name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            frame[col_name] = pd.Series(column.fill_null("").to_pylist(), dtype="str")
        else:
            frame[col_name] = _column([_cell(v, keep_lists=True) for v in column.to_pylist()])
    return SourceTable(frame=frame, rows=np.arange(1, len(frame) + 1, dtype=np.int64), name=name, format="parquet",
                       row_label="record")


def read_xlsx(path: Path, name: str, sheet: str | None, header: bool | None) -> SourceTable:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged workbook
        raise InvalidInput(f"'{name}' is not a readable Excel workbook: {exc}",
                           "Open it in Excel and save it again, or save it as CSV.") from exc
    try:
        sheets = list(book.sheetnames)
        if sheet and sheet not in sheets:
            raise InvalidInput(f"'{name}' has no sheet called '{sheet}'.",
                               f"Pick one of: {', '.join(repr(s) for s in sheets)}.")
        chosen = sheet or sheets[0]
        values = [list(r) for r in book[chosen].iter_rows(values_only=True)]
    finally:
        book.close()
    numbered = [(i, r) for i, r in enumerate(values, start=1) if any(v not in (None, "") for v in r)]
    if not numbered:
        raise InvalidInput(f"Sheet '{chosen}' of '{name}' is empty.",
                           f"Pick the sheet with the data (sheets: {', '.join(sheets)}).")
    width = max(len(r) for _, r in numbered)
    cells = [[_cell(v) for v in r] + [""] * (width - len(r)) for _, r in numbered]
    has_header = looks_like_header(cells[0]) if header is None else header
    if has_header:
        names, body, numbers = header_names(cells[0]), cells[1:], [n for n, _ in numbered[1:]]
    else:
        names, body, numbers = [f"column_{i + 1}" for i in range(width)], cells, [n for n, _ in numbered]
    check_names(names, name)
    frame = pd.DataFrame({n: pd.Series([row[i] for row in body], dtype="str") for i, n in enumerate(names)})
    return SourceTable(frame=frame, rows=np.asarray(numbers, dtype=np.int64), name=name, format="xlsx",
                       header=has_header, sheet=chosen, sheets=sheets)
