"""Parquet: string columns as they are, any other column's values as text; read in batches of rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from studio.core.errors import InvalidInput
from studio.data.table import SourceTable, check_names, join, text_cell, text_column


def read(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None,
         header: bool | None = None) -> SourceTable:
    """`sheet` and `header` do not apply to Parquet."""
    return join(list(stream(path, name, head, fmt)))


def stream(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None, header: bool | None = None,
           batch_rows: int = 50_000, encoding: str | None = None) -> Iterator[SourceTable]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(exc: Exception) -> InvalidInput:
        return InvalidInput(f"'{name}' is not a readable Parquet file: {str(exc).splitlines()[0]}",
                            "Write it again (pandas: df.to_parquet), or upload CSV.")

    try:
        source = pq.ParquetFile(path)
        names = source.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(exc) from exc
    check_names(names, name)
    start = 1
    batches = source.iter_batches(batch_size=max(int(batch_rows), 1))
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise unreadable(exc) from exc
        if batch is None and start > 1:
            return
        batch = batch if batch is not None else pa.RecordBatch.from_pylist([], schema=source.schema_arrow)
        frame = pd.DataFrame()
        for col_name, column in zip(batch.schema.names, batch.columns, strict=True):
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                frame[col_name] = pd.Series(column.fill_null("").to_pylist(), dtype="str")
            else:
                frame[col_name] = text_column([text_cell(v, keep_lists=True) for v in column.to_pylist()])
        yield SourceTable(frame=frame, rows=np.arange(start, start + len(frame), dtype=np.int64), name=name,
                          format="parquet", row_label="record")
        start += max(len(frame), 1)
        if batch.num_rows == 0:
            return
