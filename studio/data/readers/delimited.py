"""CSV and TSV: the delimiter and header sniffed, read by Arrow's CSV reader with every cell as text.
A few ragged rows (more or fewer cells than the header) are set aside for rejected.csv with their number;
a file where half the rows or more are ragged is refused with the likely cause (a delimiter inside an
unquoted cell, or the wrong delimiter)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
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
    join,
    looks_like_header,
    sniff_encoding,
)

CSV_BLOCK_BYTES = 16 << 20  # one CSV row may not be longer than this (a "CSV bomb" of giant fields)
_DELIMITERS = [",", ";", "\t", "|"]
RAGGED_TEXT_CHARS = 2000  # of a ragged row's text kept for rejected.csv


class ReadAgain(Exception):  # noqa: N818 - a signal to the caller, not an error
    """The file must be read again from the start with another encoding (Windows bytes found past the head)."""

    def __init__(self, encoding: str):
        super().__init__(encoding)
        self.encoding = encoding


def read(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None,
         header: bool | None = None) -> SourceTable:
    """`sheet` does not apply to a CSV. The whole file: its batches joined."""
    encoding = None
    while True:
        try:
            return join(list(stream(path, name, head, fmt, header=header, encoding=encoding)))
        except ReadAgain as again:
            encoding = again.encoding


def stream(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None, header: bool | None = None,
           batch_rows: int = 50_000, encoding: str | None = None) -> Iterator[SourceTable]:
    """The file in batches of `batch_rows` rows, read by Arrow's streaming CSV reader (one block in memory).

    Raises ReadAgain (after some batches) when the file turns out not to be UTF-8 further down."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    encoding = encoding or sniff_encoding(head) or "utf-8"
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
    read_options = pacsv.ReadOptions(  # serial: a ragged row's number is known only to a serial read
        use_threads=False, block_size=CSV_BLOCK_BYTES, column_names=names,
        encoding={"utf-8-sig": "utf8", "utf-8": "utf8"}.get(encoding, encoding),
    )
    label = encoding.replace("-sig", " (BOM)")
    numbers = _Numbers(ragged)
    pending: list[pa.RecordBatch] = []
    skip_header = has_header
    try:
        reader = pacsv.open_csv(path, read_options=read_options, parse_options=parse_options,
                                convert_options=convert_options)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                batch = None
            if batch is not None:
                pending.append(batch)
                if sum(len(b) for b in pending) < batch_rows:
                    continue
            table = pa.Table.from_batches(pending, schema=reader.schema)
            pending = []
            end = len(table) if batch is None else len(table) - len(table) % batch_rows  # the rest waits
            for start in range(0, end, batch_rows) if end else ([0] if batch is None else []):
                part = table.slice(start, min(batch_rows, end - start))
                rows = numbers.take(len(part))
                if batch is None and start + batch_rows >= end:
                    numbers.done = len(ragged)  # the end of the file: every ragged row is known
                if skip_header:  # the header record, read as data because the names were given
                    part, rows, skip_header = part.slice(1), rows[1:], False
                if len(part) or batch is None:
                    yield SourceTable(frame=part.to_pandas(), rows=rows, name=name, format=fmt, encoding=label,
                                      delimiter=delimiter, header=has_header, unreadable=numbers.unreadable(names))
            if batch is None:
                break
            pending = table.slice(end).to_batches() if end < len(table) else []
    except pa.ArrowInvalid as exc:
        if encoding == "utf-8" and "invalid UTF8" in str(exc):
            raise ReadAgain("cp1252") from exc  # UTF-8 at the top, Windows text further down: an Excel export
        raise _explain_csv_error(exc, name, encoding) from exc
    records = numbers.count + len(ragged)  # the header record included, when there is one
    if ragged and len(ragged) * 2 >= records - (1 if has_header else 0):
        number, got, text = ragged[0]
        where = f"Row {number}" if number else "A row"
        more = f" {len(ragged) - 1} more rows are like it." if len(ragged) > 1 else ""
        raise InvalidInput(
            f"{where} of '{name}' has {got} cells where the header has {len(names)} ({text[:80]!r}).{more}",
            f"A text cell probably contains the delimiter {delimiter!r} without quotes around it: put quotes around "
            "such cells, or save the sheet again from Excel, which quotes them for you.",
        )


class _Numbers:
    """Record numbers (header = 1) of the rows read, counting the ragged rows out, batch by batch."""

    def __init__(self, ragged: list):
        self.ragged, self.next, self.done, self.given, self.count = ragged, 1, 0, 0, 0

    def take(self, n: int) -> np.ndarray:
        # every ragged row before the end of this batch was reported while the batch was parsed
        later = np.asarray([r[0] for r in self.ragged[self.done:]], dtype=np.int64)
        rows = np.setdiff1d(np.arange(self.next, self.next + n + len(later), dtype=np.int64), later)[:n]
        self.count += n
        if n:
            self.next = int(rows[-1]) + 1
            self.done += int((later < self.next).sum())
        return rows

    def unreadable(self, names: list[str]) -> list[tuple[int, str, str]]:
        """The ragged rows not handed out yet, up to the last row read."""
        out = [(int(n), f"row {n} has {got} field{'s' if got != 1 else ''} where the header has {len(names)}", text)
               for n, got, text in self.ragged[self.given:self.done]]
        self.given = self.done
        return out


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
