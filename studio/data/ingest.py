"""Ingest: read an uploaded file into a table of text columns, trusting nothing about it.

CSV/TSV (encoding, delimiter and header sniffed), JSONL, JSON, Parquet and XLSX. Every refusal is an
InvalidInput that names the problem, the row and the fix; reading never writes anything.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from studio.core.errors import InvalidInput

DEFAULT_MAX_MB = 512  # STUDIO_MAX_UPLOAD_MB overrides; 100k rows of ~300 tokens are ~135 MB of CSV
MAX_CELL_CHARS = 100_000  # ~25k tokens: longer than any max length, so only a broken or hostile file has one
MAX_COLUMNS = 500
CSV_BLOCK_BYTES = 16 << 20  # one CSV row may not be longer than this (a "CSV bomb" of giant fields)
SAMPLE_BYTES = 64 << 10
FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "xlsx")
_DELIMITERS = [",", ";", "\t", "|"]
_UNNAMED = "\x00unnamed-"  # a header cell left empty: NUL never occurs in a real column name
_MAGIC = [
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "a program"), (b"MZ", "a Windows program"), (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
]


@dataclass
class SourceTable:
    """The rows of an uploaded file: text columns (a messages column may hold lists), and where they came from."""

    frame: pd.DataFrame
    rows: np.ndarray  # the source's own number of each row: spreadsheet row (header = 1), JSONL line, record
    name: str
    format: str
    row_label: str = "row"  # how the source numbers its rows: "row", "line" or "record"
    encoding: str | None = None
    delimiter: str | None = None
    header: bool = True
    sheet: str | None = None
    sheets: list[str] = field(default_factory=list)
    skipped_empty: int = 0
    dropped_columns: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "format": self.format, "rows": len(self.frame), "columns": self.columns,
            "encoding": self.encoding, "delimiter": self.delimiter, "header": self.header,
            "sheet": self.sheet, "sheets": self.sheets, "skipped_empty_rows": self.skipped_empty,
            "dropped_columns": self.dropped_columns,
        }

    def sample(self, n: int = 5) -> list[dict[str, Any]]:
        head = self.frame.head(n)
        return [{self.row_label: int(r), **rec} for r, rec in zip(self.rows[:n], head.to_dict("records"), strict=True)]


def max_bytes_default() -> int:
    raw = os.environ.get("STUDIO_MAX_UPLOAD_MB", "")
    try:
        return int(float(raw) * (1 << 20)) if raw else DEFAULT_MAX_MB << 20
    except ValueError as exc:
        raise InvalidInput(f"STUDIO_MAX_UPLOAD_MB is '{raw}', not a number.", "Set it to a size in MB, e.g. 512.") \
            from exc


def read_table(
    path: str | Path,
    *,
    sheet: str | None = None,
    header: bool | None = None,
    max_bytes: int | None = None,
    name: str | None = None,
) -> SourceTable:
    """Read CSV/TSV/JSONL/JSON/Parquet/XLSX into a SourceTable, or raise InvalidInput saying why not.

    `header=None` sniffs whether the first row holds column names (CSV/TSV and XLSX); `sheet` picks an
    XLSX sheet by name (default: the first); `max_bytes` defaults to STUDIO_MAX_UPLOAD_MB.
    """
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise InvalidInput(f"There is no file at {path}.", "Check the path, or upload the file again.")
    size = path.stat().st_size
    limit = max_bytes if max_bytes is not None else max_bytes_default()
    if size == 0:
        raise InvalidInput(f"'{name}' is empty (0 bytes).", "Export the spreadsheet again; the file has no rows.")
    if size > limit:
        raise InvalidInput(
            f"'{name}' is {size / (1 << 20):,.1f} MB, over the upload limit of {limit / (1 << 20):,.0f} MB.",
            "Split the file, or raise the limit with STUDIO_MAX_UPLOAD_MB.",
        )
    with path.open("rb") as fh:
        head = fh.read(SAMPLE_BYTES)
    fmt = _detect_format(path, head, name)
    if fmt in ("parquet", "xlsx", "json", "jsonl"):
        from studio.data import readers

        if fmt == "parquet":
            table = readers.read_parquet(path, name)
        elif fmt == "xlsx":
            table = readers.read_xlsx(path, name, sheet, header)
        else:
            table = readers.read_json(path, name, head, fmt)
    else:
        table = _read_delimited(path, name, head, fmt, header)
    _check_columns(table)
    _drop_empty_rows(table)
    if len(table.frame) == 0:
        raise InvalidInput(f"'{name}' has column names but no rows of data.",
                           "Add rows under the header and upload again.")
    release_memory()
    return table


def release_memory() -> None:
    """Hand Arrow's freed buffers (CSV blocks, intermediate strings) back to the OS between phases."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


# --- format and encoding --------------------------------------------------------------------------


def _detect_format(path: Path, head: bytes, name: str) -> str:
    ext = path.suffix.lower().lstrip(".")
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                if "xl/workbook.xml" in zf.namelist():
                    return "xlsx"
        except zipfile.BadZipFile:
            pass
        raise InvalidInput(f"'{name}' is a zip archive, not a spreadsheet.",
                           "Unzip it and upload the CSV or XLSX inside.")
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise InvalidInput(f"'{name}' is an old Excel .xls workbook, which cannot be read safely.",
                           "Open it in Excel or LibreOffice and save it as .xlsx or CSV.")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise InvalidInput(f"'{name}' is {what}, not a table of rows.", _FORMATS_FIX)
    if ext in ("parquet", "pq", "xlsx", "xlsm"):  # the extension promises a binary format the bytes do not have
        raise InvalidInput(f"'{name}' is named .{ext} but its content is not a {ext.upper()} file.", _FORMATS_FIX)
    encoding = sniff_encoding(head)
    if encoding is None:
        raise InvalidInput(f"'{name}' is a binary file, not text or a spreadsheet.", _FORMATS_FIX)
    text = (_decode_sample(head, encoding) or "").lstrip()
    if ext in ("jsonl", "ndjson"):
        return "jsonl"
    if ext == "json" or (ext not in ("csv", "tsv", "tab", "txt") and text[:1] in ("[", "{")):
        first = text.split("\n", 1)[0].strip()
        if text.startswith("{") and first.endswith("}") and "\n" in text.strip():
            return "jsonl"  # one object per line, saved as .json
        return "json"
    return "tsv" if ext in ("tsv", "tab") else "csv"


_FORMATS_FIX = "Upload a CSV, TSV, JSONL, JSON, Parquet or XLSX file (in Excel: File > Save As > CSV UTF-8)."


def sniff_encoding(head: bytes) -> str | None:
    """The text encoding of a file from its first bytes; None for binary content."""
    encoding = _guess_encoding(head)
    if encoding is None or encoding in ("cp1252", "latin-1"):
        return encoding
    text = _decode_sample(head, encoding) or ""
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\v")
    return None if controls > max(8, len(text) // 100) else encoding


def _guess_encoding(head: bytes) -> str | None:
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    sample = head[: len(head) - len(head) % 2]
    if b"\x00" in sample:
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        half = len(sample) / 2
        if odd > 0.3 * half and even < 0.05 * half:
            return "utf-16-le"
        if even > 0.3 * half and odd < 0.05 * half:
            return "utf-16-be"
        return None
    if _decode_sample(head, "utf-8") is not None:
        return "utf-8"
    try:
        head.decode("cp1252")
    except UnicodeDecodeError:
        return "latin-1"  # every byte is a character; cp1252 leaves five undefined
    return "cp1252"


def _decode_sample(head: bytes, encoding: str) -> str | None:
    """Decode the first bytes, forgiving only a character cut in half at the end of the sample."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        return decoder.decode(head, final=False)
    except UnicodeDecodeError:
        return None


# --- CSV / TSV ------------------------------------------------------------------------------------


def _read_delimited(path: Path, name: str, head: bytes, fmt: str, header: bool | None) -> SourceTable:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    encoding = sniff_encoding(head) or "utf-8"
    sample = _decode_sample(head, encoding) or head.decode("latin-1")
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
        ragged.append((row.number, row.actual_columns, row.text[:80]))
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
    if ragged:
        number, got, text = ragged[0]
        where = f"Row {number}" if number else "A row"
        more = f" {len(ragged) - 1} more rows are like it." if len(ragged) > 1 else ""
        raise InvalidInput(
            f"{where} of '{name}' has {got} cells where the header has {len(names)} ({text!r}).{more}",
            f"A text cell probably contains the delimiter {delimiter!r} without quotes around it: put quotes around "
            "such cells, or save the sheet again from Excel, which quotes them for you.",
        )
    start = 1 if has_header else 0
    if has_header:
        table = table.slice(1)  # the header record, read as data because the names were given
    rows = np.arange(len(table), dtype=np.int64) + start + 1
    frame = table.to_pandas()
    return SourceTable(frame=frame, rows=rows, name=name, format=fmt, encoding=encoding.replace("-sig", " (BOM)"),
                       delimiter=delimiter, header=has_header)


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


def looks_like_header(cells: list[str]) -> bool:
    """Column names are short labels; a first row with numbers, sentences or long text is data."""
    for cell in cells:
        text = cell.strip()
        if len(text) > 60 or len(text.split()) > 6:
            return False
        if text and text.replace(".", "", 1).replace("-", "", 1).isdigit():
            return False
    return True


def header_names(cells: list[str]) -> list[str]:
    return [c.strip() or f"{_UNNAMED}{i}" for i, c in enumerate(cells, start=1)]


def check_names(names: list[str], name: str) -> None:
    seen: dict[str, int] = {}
    for i, col in enumerate(names, start=1):
        key = "" if col.startswith(_UNNAMED) else col.strip().casefold()
        if key in seen:
            raise InvalidInput(
                f"Two columns of '{name}' are both called '{col}' (columns {seen[key]} and {i}).",
                "Give every column its own name in the first row.",
            )
        if key:
            seen[key] = i


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
    return InvalidInput(f"'{name}' could not be read as CSV: {text.splitlines()[0]}", _FORMATS_FIX)


# --- checks every format shares ---------------------------------------------------------------------


def _check_columns(table: SourceTable) -> None:
    """Unnamed columns: dropped when empty (Excel's stray trailing column), refused when they hold data."""
    frame = table.frame
    for position, col in enumerate(list(frame.columns), start=1):
        if not (str(col).startswith(_UNNAMED) or not str(col).strip()):
            continue
        series = frame[col]
        text = series if series.dtype != object else series.map(lambda v: "" if v in ("", None) else "x")
        filled = text.str.strip() != ""
        if not filled.any():
            del frame[col]
            table.dropped_columns.append(f"column {position} (no name, empty)")
            continue
        first = int(table.rows[int(np.argmax(filled.to_numpy()))])
        raise InvalidInput(
            f"Column {position} of '{table.name}' has no name but holds values (first in {table.row_label} {first}).",
            "Give it a name in the first row, or delete the column.",
        )
    for col in frame.columns:
        if frame[col].dtype == object:
            continue
        lengths = frame[col].str.len()
        if len(lengths) and int(lengths.max()) > MAX_CELL_CHARS:
            at = int(lengths.to_numpy().argmax())
            raise InvalidInput(
                f"{table.row_label.title()} {int(table.rows[at])}, column '{col}' of '{table.name}' holds "
                f"{int(lengths.iloc[at]):,} characters; a cell may hold at most {MAX_CELL_CHARS:,}.",
                "Remove or shorten that cell: no training example is that long.",
            )


def _drop_empty_rows(table: SourceTable) -> None:
    frame = table.frame
    if frame.shape[1] == 0:
        raise InvalidInput(f"'{table.name}' has no columns.", "Put the column names in the first row.")
    empty = np.ones(len(frame), dtype=bool)
    for col in frame.columns:
        series = frame[col]
        if series.dtype == object:
            empty &= series.map(lambda v: v in ("", None, [])).to_numpy(dtype=bool)
        else:
            empty &= (series.str.strip() == "").to_numpy(dtype=bool)
    if empty.any():
        table.skipped_empty = int(empty.sum())
        table.frame = frame.loc[~empty].reset_index(drop=True)
        table.rows = table.rows[~empty]
