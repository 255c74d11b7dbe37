"""CSV and TSV: the delimiter and header sniffed, read by Arrow's CSV reader with every cell as text.
A few ragged rows (more or fewer cells than the header) are set aside for rejected.csv with their number;
a file where half the rows or more are ragged is refused with the likely cause (a delimiter inside an
unquoted cell, or the wrong delimiter)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from studio.core.errors import InvalidInput
from studio.data.table import (
    FORMATS_FIX,
    MAX_COLUMNS,
    SAMPLE_BYTES,
    SourceTable,
    check_names,
    decode_sample,
    header_names,
    looks_like_header,
    sniff_encoding,
)

CSV_BLOCK_BYTES = 16 << 20  # one CSV row may not be longer than this (a "CSV bomb" of giant fields)
_DELIMITERS = [",", ";", "\t", "|"]
RAGGED_TEXT_CHARS = 2000  # of a ragged row's text kept for rejected.csv


def read(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None,
         header: bool | None = None) -> SourceTable:
    """`sheet` does not apply to a CSV."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    encoding = sniff_encoding(head) or "utf-8"
    sample = decode_sample(head, encoding) or head.decode("latin-1")
    if len(head) == SAMPLE_BYTES and "\n" in sample:  # drop the last, probably cut, line
        sample = sample[: sample.rindex("\n") + 1]
    delimiter = "\t" if fmt == "tsv" else _sniff_delimiter(sample)
    first = _first_record(sample, delimiter)
    if not first or all(not c.strip() for c in first):
        raise InvalidInput(f"The first row of '{name}' is empty.", "Put the column names in the first row.")
    has_header = looks_like_header(first) if header is None else header
    names = header_names(first) if has_header else [f"column_{i + 1}" for i in range(len(first))]
    check_names(names, name)
    if len(names) > MAX_COLUMNS:
        raise InvalidInput(f"'{name}' has {len(names)} columns; at most {MAX_COLUMNS} are read.",
                           "Keep only the columns with the questions, answers and context.")
    ragged: list[tuple[int | None, int, str]] = []

    def on_bad_row(row) -> str:
        ragged.append((row.number, row.actual_columns, row.text[:RAGGED_TEXT_CHARS]))
        return "skip"

    parse_options = pacsv.ParseOptions(
        delimiter=delimiter, quote_char='"', double_quote=True, newlines_in_values=True,
        invalid_row_handler=on_bad_row, ignore_empty_lines=True,
    )
    convert_options = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names}, strings_can_be_null=False, quoted_strings_can_be_null=False,
    )
    threads = True
    while True:
        read_options = pacsv.ReadOptions(
            use_threads=threads, block_size=CSV_BLOCK_BYTES, column_names=names,
            encoding={"utf-8-sig": "utf8", "utf-8": "utf8"}.get(encoding, encoding),
        )
        try:
            table = pacsv.read_csv(path, read_options=read_options, parse_options=parse_options,
                                   convert_options=convert_options)
            if ragged and ragged[0][0] is None and threads:  # row numbers are known only to a serial read
                threads = False
                ragged.clear()
                continue
            break
        except pa.ArrowInvalid as exc:
            if encoding == "utf-8" and "invalid UTF8" in str(exc):
                encoding = "cp1252"  # UTF-8 at the top, Windows text further down: an Excel export
                ragged.clear()
                continue
            raise _explain_csv_error(exc, name, encoding) from exc
    records = len(table) + len(ragged)  # the header record included, when there is one
    if ragged and len(ragged) * 2 >= records - (1 if has_header else 0):
        number, got, text = ragged[0]
        where = f"Row {number}" if number else "A row"
        more = f" {len(ragged) - 1} more rows are like it." if len(ragged) > 1 else ""
        raise InvalidInput(
            f"{where} of '{name}' has {got} cells where the header has {len(names)} ({text[:80]!r}).{more}",
            f"A text cell probably contains the delimiter {delimiter!r} without quotes around it: put quotes around "
            "such cells, or save the sheet again from Excel, which quotes them for you.",
        )
    # a minority of ragged rows: set aside with the reason (they go to rejected.csv), the rest is read;
    # the kept rows keep their own record numbers (header = 1), the ragged ones counted out
    numbers = np.setdiff1d(np.arange(1, records + 1, dtype=np.int64), [n for n, _, _ in ragged])
    if has_header:
        table = table.slice(1)  # the header record, read as data because the names were given
        numbers = numbers[1:]
    frame = table.to_pandas()
    unreadable = [(int(n), f"row {n} has {got} field{'s' if got != 1 else ''} where the header has {len(names)}",
                   text) for n, got, text in ragged]
    return SourceTable(frame=frame, rows=numbers, name=name, format=fmt, encoding=encoding.replace("-sig", " (BOM)"),
                       delimiter=delimiter, header=has_header, unreadable=unreadable)


def _sniff_delimiter(sample: str) -> str:
    """The delimiter that splits the first rows into the most columns, the same number on (nearly) every row."""
    best, best_score = ",", (0.0, 1)
    for delim in _DELIMITERS:
        try:
            counts = [len(r) for r in list(csv.reader(io.StringIO(sample), delimiter=delim))[:50] if r]
        except csv.Error:
            continue
        if not counts:
            continue
        mode = max(set(counts), key=counts.count)
        if mode < 2:
            continue
        score = (counts.count(mode) / len(counts), mode)
        if score > best_score:
            best, best_score = delim, score
    return best


def _first_record(sample: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(sample), delimiter=delimiter), [])
    except csv.Error:
        return []


def _explain_csv_error(exc: Exception, name: str, encoding: str) -> InvalidInput:
    text = str(exc)
    if "straddl" in text:
        return InvalidInput(
            f"A single row of '{name}' is longer than {CSV_BLOCK_BYTES >> 20} MB, far more than any training example "
            "(or a quote is never closed, so the rest of the file reads as one cell).",
            "Check for a cell with an unmatched quote (\"), or remove the giant cell.",
        )
    if "UTF8" in text or "decode" in text.lower():
        return InvalidInput(f"'{name}' is not valid {encoding} text: {text.splitlines()[0]}",
                            "Save it again as 'CSV UTF-8' from Excel, or upload the XLSX itself.")
    return InvalidInput(f"'{name}' could not be read as CSV: {text.splitlines()[0]}", FORMATS_FIX)
