"""What the checks of a file (and of an uploaded validation file) found, gathered batch by batch: the report's
check list, the rows of rejected.csv, the token counts, and the keys of the kept rows that the split, the
leak check and the conflicting-answers warning need; and the content hash that names a dataset version."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pandas as pd
    import pyarrow as pa

    from studio.data.checks import Checked
    from studio.data.table import SourceTable

_WARNING_ORDER = ("very short answers", "possible personal data", "same question, different answers")


class Kept:
    """The kept rows of one file, in the order they went to its spool: row numbers, hashed question and answer
    keys, token counts (about 40 bytes a row)."""

    def __init__(self) -> None:
        keys = ("rows", "question", "answer", "tokens", "answer_tokens")
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}

    def add(self, rows: np.ndarray, checked: Checked) -> None:
        for key, values in (("rows", rows), ("question", checked.question_hash), ("answer", checked.answer_hash),
                            ("tokens", checked.tokens), ("answer_tokens", checked.answer_tokens)):
            self.parts[key].append(np.asarray(values))

    def __getattr__(self, key: str) -> np.ndarray:
        parts = self.__dict__["parts"].get(key)
        if parts is None:
            raise AttributeError(key)
        dtype = np.uint64 if key in ("question", "answer") else np.int64
        joined = np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype=dtype)
        self.parts[key] = [joined]
        return joined

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts["rows"])


class Outcome:
    """What the checks of both files found, each rejected row with its file ("data" or "validation")."""

    def __init__(self) -> None:
        self.sources: dict[str, dict[str, Any]] = {}  # file -> its describe(), totalled over the batches
        self.reasons: dict[str, list[int]] = {}  # check -> row numbers rejected
        self.warnings: dict[str, list[np.ndarray]] = {}  # check -> row numbers
        self.truncated: list[int] = []
        self.counted: list[np.ndarray] = []
        self.unreadable: list[int] = []
        self.rejected_count = 0
        self.parts: list[pd.DataFrame] = []  # rejected.csv, batch by batch
        self.label = "row"

    def source(self, file: str, table: SourceTable) -> None:
        """Count one batch of a file into its description."""
        self.label = self.label if file == "validation" else table.row_label
        known = self.sources.get(file)
        if known is None:
            self.sources[file] = table.describe()
            return
        known["rows"] += len(table.frame)
        known["skipped_empty_rows"] += table.skipped_empty
        known["unreadable_rows"] += len(table.unreadable)
        known["dropped_columns"] = list(dict.fromkeys(known["dropped_columns"] + table.dropped_columns))

    def add(self, file: str, table: SourceTable, checked: Checked) -> None:

        numbers = table.rows
        for key, items in checked.reasons.items():
            self.reasons.setdefault(key, []).extend(int(numbers[i]) for i in items)
        for key, items in checked.warnings.items():
            self.warnings.setdefault(key, []).append(numbers[np.asarray(items, dtype=np.int64)])
        self.truncated += [int(numbers[i]) for i in checked.truncated]
        self.counted.append(checked.counted_tokens)
        self.add_unreadable(file, table)
        self.add_rejected(file, table, checked.rejected)

    def add_unreadable(self, file: str, table: SourceTable) -> None:
        """The rows a reader could not split into cells (a ragged CSV row), with their text."""
        import pandas as pd

        if table.unreadable:
            self.unreadable += [n for n, _, _ in table.unreadable]
            self.rejected_count += len(table.unreadable)
            self.parts.append(pd.DataFrame({"file": file, "row": [n for n, _, _ in table.unreadable],
                                            "reason": [r for _, r, _ in table.unreadable],
                                            "raw": [t for _, _, t in table.unreadable]}))

    def add_rejected(self, file: str, table: SourceTable, rejected: list[tuple[int, str]]) -> None:
        """Rows of a batch rejected by a check: (index in the batch, reason), with their cells for rejected.csv."""
        import pandas as pd

        self.rejected_count += len(rejected)
        if not rejected:
            return
        items = sorted(rejected)
        index = [i for i, _ in items]
        cells = table.frame.iloc[index].reset_index(drop=True)
        for col in cells.columns:
            if cells[col].dtype == object:
                cells[col] = cells[col].map(lambda v: v if isinstance(v, str) else json.dumps(
                    v, ensure_ascii=False, default=str))
        head = pd.DataFrame({"file": file, "row": table.rows[index], "reason": [r for _, r in items]})
        self.parts.append(pd.concat([head, cells], axis=1))

    def report(self, train_tokens: np.ndarray, val_tokens: np.ndarray, answer_tokens: np.ndarray, leaks: int,
               max_length: int) -> dict[str, Any]:
        from studio.data.report import CHECKS, check_entry, histogram, token_stats

        label = self.label
        order = list(CHECKS)
        rejected = sorted((k for k, v in self.reasons.items() if v),
                          key=lambda k: order.index(k) if k in order else len(order))
        checks = [check_entry(k, "rejected", self.reasons[k], label) for k in rejected]
        if self.unreadable:
            checks.insert(0, check_entry("unreadable row", "rejected", self.unreadable, label))
        if self.truncated:
            checks.append(check_entry("too long", "truncated", self.truncated, label))
        if leaks:
            checks.append(check_entry("leaked into validation", "warning", [], label, total=leaks))
        warned = sorted(self.warnings, key=lambda k: next(i for i, w in enumerate(_WARNING_ORDER) if k.startswith(w)))
        for key in warned:
            rows = np.concatenate(self.warnings[key]) if self.warnings[key] else np.empty(0, dtype=np.int64)
            if len(rows):
                checks.append(check_entry(key, "warning", rows[:10].tolist(), label, total=len(rows)))
        counted = np.concatenate(self.counted) if self.counted else np.empty(0, dtype=np.int64)
        return {
            "rows_truncated": len(self.truncated),
            "tokens": token_stats(np.concatenate([train_tokens, val_tokens])),
            "tokens_train": int(train_tokens.sum()), "answer_tokens": token_stats(answer_tokens),
            "histogram": histogram(counted, max_length), "rows_over_max_length": int((counted > max_length).sum()),
            "checks": checks,
        }

    def rejected_frame(self) -> pd.DataFrame:
        """One row per rejected source row: which file, its row number, the reason, then its original cells
        (for a row that could not be split into cells, its text in `raw`)."""
        import pandas as pd

        if not self.parts:
            return pd.DataFrame(columns=["file", "row", "reason"])
        frame = pd.concat(self.parts, ignore_index=True)
        frame["file"] = pd.Categorical(frame["file"], ["data", "validation"])
        frame = frame.sort_values(["file", "row"], kind="stable", ignore_index=True)
        frame["file"] = frame["file"].astype(str)
        for col in frame.columns:  # a column some batches lack (JSON keys seen later) reads as empty
            if col not in ("file", "row", "reason", "raw") and frame[col].isna().any():
                frame[col] = frame[col].fillna("")
        return frame[[c for c in frame.columns if c != "raw"] + (["raw"] if "raw" in frame.columns else [])]


def content_hash(settings: dict[str, Any], train: Iterable[pa.ListArray], val: Iterable[pa.ListArray]) -> str:
    """sha256 of the settings that shape the rendering and of every message, in order, of both splits. Each part
    (messages per row, roles, contents and their lengths) is hashed as one stream, so batch sizes do not matter."""
    import pyarrow.compute as pc

    from studio.data.render import field_lists

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for split, batches in (("train", train), ("val", val)):
        streams = [hashlib.sha256() for _ in range(5)]
        for messages in batches:
            offsets, contents = field_lists(messages, "content")
            _, roles = field_lists(messages, "role")
            streams[0].update(np.diff(offsets).astype("<i8").tobytes())
            for i, texts in enumerate((roles, contents)):
                streams[1 + 2 * i].update(pc.binary_length(texts).to_numpy(zero_copy_only=False)
                                          .astype("<i8").tobytes())
                streams[2 + 2 * i].update(_value_bytes(texts))
        digest.update(f"\x1d{split}\x1d".encode() + b"".join(s.digest() for s in streams))
    return digest.hexdigest()


def _value_bytes(texts: pa.Array) -> memoryview:
    """The characters of a string array, end to end, without a copy."""
    import pyarrow as pa

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())
    if len(texts) == 0 or texts.buffers()[2] is None:
        return memoryview(b"")
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)[texts.offset:texts.offset + len(texts) + 1]
    return memoryview(texts.buffers()[2])[int(offsets[0]):int(offsets[-1])]
