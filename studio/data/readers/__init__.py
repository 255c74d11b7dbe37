"""One reader per file format; each turns a file into a SourceTable (studio/data/table.py) or refuses it
with an InvalidInput that names the row and the fix. A new format is one new module here and one line below.

Every reader is `read(path, name, head, fmt, *, sheet=None, header=None) -> SourceTable` (the whole file) and
`stream(..., batch_rows=N, encoding=None)`, an iterator of SourceTables of at most N rows each, numbered as in
the whole file: `head` is the file's first bytes, `fmt` the format ingest detected, `sheet` and `header` what
the user chose (or None). CSV/TSV, JSON lines and Parquet stream; a JSON document and an XLSX come whole.
"""

from __future__ import annotations

from collections.abc import Callable

from studio.data.readers import delimited, jsonl, parquet, xlsx

READERS: dict[str, Callable] = {
    "csv": delimited.read,
    "tsv": delimited.read,
    "jsonl": jsonl.read,
    "json": jsonl.read,
    "parquet": parquet.read,
    "xlsx": xlsx.read,
}
STREAMERS: dict[str, Callable] = {
    "csv": delimited.stream,
    "tsv": delimited.stream,
    "jsonl": jsonl.stream,
    "json": jsonl.stream,
    "parquet": parquet.stream,
    "xlsx": xlsx.stream,
}
ReadAgain = delimited.ReadAgain
