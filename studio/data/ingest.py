"""Ingest: read an uploaded file into a table of text columns, trusting nothing about it.

The file's format is told from its bytes (and name); the reader for it (studio/data/readers/) makes the
table, and the checks every format shares run on it. Every refusal is an InvalidInput that names the
problem, the row and the fix; reading never writes anything.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from studio.core.errors import InvalidInput
from studio.data.readers import READERS, STREAMERS, ReadAgain
from studio.data.table import (
    FORMATS_FIX,
    SAMPLE_BYTES,
    SourceTable,
    check_columns,
    decode_sample,
    drop_empty_rows,
    sniff_encoding,
)

DEFAULT_BATCH_ROWS = 50_000  # rows read, checked and written at a time (STUDIO_IMPORT_BATCH_ROWS)
HEAD_ROWS = 1000  # rows of a streamed file kept to guess the mapping and show a sample
DEFAULT_MAX_MB = 512  # STUDIO_MAX_UPLOAD_MB overrides; 100k rows of ~300 tokens are ~135 MB of CSV
FORMATS = tuple(READERS)
_MAGIC = [
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "a program"), (b"MZ", "a Windows program"), (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
]


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
    path, name, head, fmt = _open(path, name, max_bytes if max_bytes is not None else max_bytes_default())
    table = READERS[fmt](path, name, head, fmt, sheet=sheet, header=header)
    check_columns(table)
    drop_empty_rows(table)
    if len(table.frame) == 0:
        raise InvalidInput(f"'{name}' has column names but no rows of data.",
                           "Add rows under the header and upload again.")
    release_memory()
    return table


def _open(path: str | Path, name: str | None, limit: int | None) -> tuple[Path, str, bytes, str]:
    """(path, name, first bytes, format) of a file that exists, is not empty and is within the limit."""
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise InvalidInput(f"There is no file at {path}.", "Check the path, or upload the file again.")
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput(f"'{name}' is empty (0 bytes).", "Export the spreadsheet again; the file has no rows.")
    if limit is not None and size > limit:
        raise InvalidInput(
            f"'{name}' is {size / (1 << 20):,.1f} MB, over the upload limit of {limit / (1 << 20):,.0f} MB.",
            "Split the file, or raise the limit with STUDIO_MAX_UPLOAD_MB.",
        )
    with path.open("rb") as fh:
        head = fh.read(SAMPLE_BYTES)
    return path, name, head, _detect_format(path, head, name)


def batch_rows_default() -> int:
    raw = os.environ.get("STUDIO_IMPORT_BATCH_ROWS", "")
    try:
        rows = int(raw) if raw else DEFAULT_BATCH_ROWS
    except ValueError as exc:
        raise InvalidInput(f"STUDIO_IMPORT_BATCH_ROWS is '{raw}', not a number.",
                           f"Set it to a number of rows, e.g. {DEFAULT_BATCH_ROWS}.") from exc
    if rows < 1:
        raise InvalidInput(f"STUDIO_IMPORT_BATCH_ROWS is {rows}.", f"Use a positive number, e.g. {DEFAULT_BATCH_ROWS}.")
    return rows


@dataclass
class FileSource:
    """A file read batch by batch, as `importer.prepare` streams it: `head` is its first batch (for the mapping
    guess and the sample); `batches()` reads the whole file again from the start, one batch in memory."""

    path: Path
    name: str
    format: str
    first_bytes: bytes
    sheet: str | None
    header: bool | None
    batch_rows: int
    head: SourceTable
    encoding: str | None = None  # set when the file must be read again as Windows text

    @property
    def columns(self) -> list[str]:
        return self.head.columns

    def batches(self) -> Iterator[SourceTable]:
        """Each batch checked as read_table checks a whole table; raises ReadAgain to be read again."""
        try:
            for table in STREAMERS[self.format](self.path, self.name, self.first_bytes, self.format,
                                                sheet=self.sheet, header=self.header, batch_rows=self.batch_rows,
                                                encoding=self.encoding):
                check_columns(table)
                drop_empty_rows(table)
                yield table
        except ReadAgain as again:
            self.encoding = again.encoding
            raise


def open_source(path: str | Path, *, sheet: str | None = None, header: bool | None = None,
                max_bytes: int | None = None, name: str | None = None, batch_rows: int | None = None) -> FileSource:
    """A file to stream: checked and sniffed like read_table, its first batch read. The size limit applies only
    when given (or STUDIO_MAX_UPLOAD_MB is set): streaming holds one batch, whatever the size of the file."""
    limit = max_bytes if max_bytes is not None else (max_bytes_default() if os.environ.get("STUDIO_MAX_UPLOAD_MB")
                                                     else None)
    path, name, head, fmt = _open(path, name, limit)
    source = FileSource(path, name, fmt, head, sheet, header, int(batch_rows or batch_rows_default()),
                        head=None)  # type: ignore[arg-type]
    peek = replace(source, batch_rows=HEAD_ROWS)  # the guess reads the first 200 rows: no need for a whole batch
    while True:
        try:
            first = next((t for t in peek.batches() if len(t.frame)), None)  # the first batch with rows
            break
        except ReadAgain:
            source.encoding = peek.encoding
            continue
    if first is None:
        raise InvalidInput(f"'{name}' has column names but no rows of data.",
                           "Add rows under the header and upload again.")
    source.head = first
    return source


def release_memory() -> None:
    """Hand Arrow's freed buffers (CSV blocks, intermediate strings) back to the OS between phases."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()



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
            raise InvalidInput(f"'{name}' is {what}, not a table of rows.", FORMATS_FIX)
    if ext in ("parquet", "pq", "xlsx", "xlsm"):  # the extension promises a binary format the bytes do not have
        raise InvalidInput(f"'{name}' is named .{ext} but its content is not a {ext.upper()} file.", FORMATS_FIX)
    encoding = sniff_encoding(head)
    if encoding is None:
        raise InvalidInput(f"'{name}' is a binary file, not text or a spreadsheet.", FORMATS_FIX)
    text = (decode_sample(head, encoding) or "").lstrip()
    if ext in ("jsonl", "ndjson"):
        return "jsonl"
    if ext == "json" or (ext not in ("csv", "tsv", "tab", "txt") and text[:1] in ("[", "{")):
        first = text.split("\n", 1)[0].strip()
        if text.startswith("{") and first.endswith("}") and "\n" in text.strip():
            return "jsonl"  # one object per line, saved as .json
        return "json"
    return "tsv" if ext in ("tsv", "tab") else "csv"
