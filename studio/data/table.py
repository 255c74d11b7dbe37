"""The table every reader produces (SourceTable: text columns, and where each row came from in the file),
and what the readers share: encoding sniffing, header rules, text cells, the checks every format passes.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from studio.core.errors import InvalidInput

MAX_CELL_CHARS = 100_000  # ~25k tokens: longer than any max length, so only a broken or hostile file has one
MAX_COLUMNS = 500
SAMPLE_BYTES = 64 << 10  # the first bytes of a file: enough to sniff its format, encoding and delimiter
UNNAMED = "\x00unnamed-"  # a header cell left empty: NUL never occurs in a real column name
FORMATS_FIX = "Upload a CSV, TSV, JSONL, JSON, Parquet or XLSX file (in Excel: File > Save As > CSV UTF-8)."


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
    # rows the reader could not split into the header's columns: (row number, reason, their text)
    unreadable: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "format": self.format, "rows": len(self.frame), "columns": self.columns,
            "encoding": self.encoding, "delimiter": self.delimiter, "header": self.header,
            "sheet": self.sheet, "sheets": self.sheets, "skipped_empty_rows": self.skipped_empty,
            "dropped_columns": self.dropped_columns, "unreadable_rows": len(self.unreadable),
        }

    def sample(self, n: int = 5) -> list[dict[str, Any]]:
        head = self.frame.head(n)
        return [{self.row_label: int(r), **rec} for r, rec in zip(self.rows[:n], head.to_dict("records"), strict=True)]

    def slices(self, batch_rows: int):
        """The table in batches of at most `batch_rows` rows (what it counted and set aside goes with the first),
        as a file streams."""
        for start in range(0, max(len(self.frame), 1), max(int(batch_rows), 1)):
            first = start == 0
            yield replace(self, frame=self.frame.iloc[start:start + batch_rows].reset_index(drop=True),
                          rows=self.rows[start:start + batch_rows], unreadable=self.unreadable if first else [],
                          skipped_empty=self.skipped_empty if first else 0)


def join(batches: list[SourceTable]) -> SourceTable:
    """Batches of one file as one table (the columns of every batch, in the order they first appeared)."""
    first = batches[0]
    if len(batches) == 1:
        return first
    frame = pd.concat([b.frame for b in batches], ignore_index=True)
    for col in frame.columns:  # a column missing from early batches (JSON keys seen later) reads as empty
        if frame[col].isna().any():
            frame[col] = frame[col].fillna("")
    return replace(first, frame=frame, rows=np.concatenate([b.rows for b in batches]),
                   skipped_empty=sum(b.skipped_empty for b in batches),
                   dropped_columns=list(dict.fromkeys(c for b in batches for c in b.dropped_columns)),
                   unreadable=[u for b in batches for u in b.unreadable])


# --- encoding --------------------------------------------------------------------------------------


def sniff_encoding(head: bytes) -> str | None:
    """The text encoding of a file from its first bytes; None for binary content."""
    encoding = _guess_encoding(head)
    if encoding is None or encoding in ("cp1252", "latin-1"):
        return encoding
    text = decode_sample(head, encoding) or ""
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
    if decode_sample(head, "utf-8") is not None:
        return "utf-8"
    try:
        head.decode("cp1252")
    except UnicodeDecodeError:
        return "latin-1"  # every byte is a character; cp1252 leaves five undefined
    return "cp1252"


def decode_sample(head: bytes, encoding: str) -> str | None:
    """Decode the first bytes, forgiving only a character cut in half at the end of the sample."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        return decoder.decode(head, final=False)
    except UnicodeDecodeError:
        return None


# --- header and cells --------------------------------------------------------------------------


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
    return [c.strip() or f"{UNNAMED}{i}" for i, c in enumerate(cells, start=1)]


def check_names(names: list[str], name: str) -> None:
    seen: dict[str, int] = {}
    for i, col in enumerate(names, start=1):
        key = "" if col.startswith(UNNAMED) else col.strip().casefold()
        if key in seen:
            raise InvalidInput(
                f"Two columns of '{name}' are both called '{col}' (columns {seen[key]} and {i}).",
                "Give every column its own name in the first row.",
            )
        if key:
            seen[key] = i


def text_cell(value: Any, keep_lists: bool = False) -> Any:
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


def text_column(values: list[Any]) -> pd.Series:
    """Text columns as pandas strings; a column holding lists (chat messages) stays as Python objects."""
    if any(isinstance(v, list) for v in values):
        return pd.Series(values, dtype=object)
    return pd.Series(values, dtype="str")


# --- checks every format shares ---------------------------------------------------------------------


def check_columns(table: SourceTable) -> None:
    """Unnamed columns: dropped when empty (Excel's stray trailing column), refused when they hold data."""
    frame = table.frame
    for position, col in enumerate(list(frame.columns), start=1):
        if not (str(col).startswith(UNNAMED) or not str(col).strip()):
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


def drop_empty_rows(table: SourceTable) -> None:
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
