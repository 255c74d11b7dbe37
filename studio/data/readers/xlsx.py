"""XLSX: the first sheet (or the one asked for), header sniffed as for a CSV, formulas as their values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from studio.core.errors import InvalidInput
from studio.data.table import SourceTable, check_names, header_names, looks_like_header, text_cell


def read(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None,
         header: bool | None = None) -> SourceTable:
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
    cells = [[text_cell(v) for v in r] + [""] * (width - len(r)) for _, r in numbered]
    has_header = looks_like_header(cells[0]) if header is None else header
    if has_header:
        names, body, numbers = header_names(cells[0]), cells[1:], [n for n, _ in numbered[1:]]
    else:
        names, body, numbers = [f"column_{i + 1}" for i in range(width)], cells, [n for n, _ in numbered]
    check_names(names, name)
    frame = pd.DataFrame({n: pd.Series([row[i] for row in body], dtype="str") for i, n in enumerate(names)})
    return SourceTable(frame=frame, rows=np.asarray(numbers, dtype=np.int64), name=name, format="xlsx",
                       header=has_header, sheet=chosen, sheets=sheets)


def stream(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None, header: bool | None = None,
           batch_rows: int = 50_000, encoding: str | None = None):
    """A workbook is read whole (openpyxl holds the sheet's cells): at most Excel's 1,048,576 rows, and the
    upload limit. Export a bigger sheet as CSV, which streams."""
    yield read(path, name, head, fmt, sheet=sheet, header=header)
