"""Parquet: string columns as they are, any other column's values as text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from studio.core.errors import InvalidInput
from studio.data.table import SourceTable, check_names, text_cell, text_column


def read(path: Path, name: str, head: bytes, fmt: str, *, sheet: str | None = None,
         header: bool | None = None) -> SourceTable:
    """`sheet` and `header` do not apply to Parquet."""
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
            frame[col_name] = text_column([text_cell(v, keep_lists=True) for v in column.to_pylist()])
    return SourceTable(frame=frame, rows=np.arange(1, len(frame) + 1, dtype=np.int64), name=name, format="parquet",
                       row_label="record")
