"""The train/validation split (seeded, by question, so a question never sits on both sides; or an uploaded
validation file less its leaked rows), and what the checks of both files found: the report's check list,
rejected.csv and the content hash that names a dataset version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from studio.data.table import SourceTable


@dataclass
class Split:
    train: pa.ListArray
    train_index: np.ndarray  # source rows of the training chats
    val: pa.ListArray
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    answer_tokens: np.ndarray
    leaks: int  # validation rows whose question is also a training question (0 after an uploaded file's check)
    source: str  # how the validation rows were chosen


def seeded_split(main, *, val_fraction: float, val_size: int | None, seed: int) -> Split:
    import pyarrow as pa

    from studio.data.checks import leaked, split_rows

    is_val = split_rows(main.question_keys, val_fraction=val_fraction, val_size=val_size, seed=seed)
    train_pos, val_pos = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    (train, train_index), (val, _) = main.kept.take_messages(train_pos), main.kept.take_messages(val_pos)
    keys = main.question_keys
    leaks = leaked(keys.take(pa.array(train_pos)), keys.take(pa.array(val_pos)))
    share = f"{val_size} rows" if val_size is not None else f"{val_fraction:g} of the rows"
    return Split(train, train_index, val, main.tokens[train_pos], main.tokens[val_pos], main.answer_tokens,
                  len(leaks), f"seeded split (seed {seed}, {share})")


def uploaded_split(main, val, outcome: Outcome, val_name: str) -> Split:
    """The uploaded validation file's rows, less those whose question is also in the training rows."""
    from studio.data.checks import leaked

    leaks = leaked(main.question_keys, val.question_keys)
    for pos in leaks:
        outcome.reject("leaked into validation", "validation", int(val.kept.index[pos]),
                       "the same question is in the training data")
    keep = np.setdiff1d(np.arange(len(val.kept)), leaks)
    (train, train_index), (val_messages, _) = main.kept.take_messages(np.arange(len(main.kept))), \
        val.kept.take_messages(keep)
    return Split(train, train_index, val_messages, main.tokens, val.tokens[keep],
                  np.concatenate([main.answer_tokens, val.answer_tokens[keep]]), 0, f"uploaded file {val_name}")


class Outcome:
    """What the checks of both files found, each row tagged with its file ("data" or "validation")."""

    def __init__(self, tables: dict[str, SourceTable | None]):
        self.tables = tables
        self.reasons: dict[str, list[tuple[str, int]]] = {}
        self.warnings: dict[str, list[tuple[str, int]]] = {}
        self.rejected: list[tuple[str, int, str]] = []
        self.truncated: list[tuple[str, int]] = []
        self.counted: list[np.ndarray] = []

    def add(self, source: str, checked):
        for key, items in checked.reasons.items():
            self.reasons.setdefault(key, []).extend((source, i) for i in items)
        for key, items in checked.warnings.items():
            self.warnings.setdefault(key, []).extend((source, i) for i in items)
        self.rejected += [(source, i, r) for i, r in checked.rejected]
        self.truncated += [(source, i) for i in checked.truncated]
        self.counted.append(checked.counted_tokens)
        return checked

    def reject(self, check: str, source: str, index: int, reason: str) -> None:
        self.rejected.append((source, index, reason))
        self.reasons.setdefault(check, []).append((source, index))

    def unreadable(self) -> list[tuple[str, int, str, str]]:
        """Rows the readers set aside (a ragged CSV row): (file, row number, reason, the row's text)."""
        return [(src, n, reason, text) for src, table in self.tables.items() if table is not None
                for n, reason, text in table.unreadable]

    def rejected_count(self) -> int:
        return len(self.rejected) + len(self.unreadable())

    def numbers(self, items: list[tuple[str, int]]) -> list[int]:
        return [int(self.tables[src].rows[i]) for src, i in items]

    def report(self, split: Split, max_length: int, label: str) -> dict[str, Any]:
        from studio.data.report import check_entry, histogram, token_stats

        checks = [check_entry(k, "rejected", self.numbers(v), label) for k, v in self.reasons.items() if v]
        if self.unreadable():
            checks.insert(0, check_entry("unreadable row", "rejected", [n for _, n, _, _ in self.unreadable()], label))
        if self.truncated:
            checks.append(check_entry("too long", "truncated", self.numbers(self.truncated), label))
        if split.leaks:
            checks.append(check_entry("leaked into validation", "warning", [], label, total=split.leaks))
        checks += [check_entry(k, "warning", self.numbers(v), label) for k, v in self.warnings.items() if v]
        counted = np.concatenate(self.counted)
        return {
            "rows_truncated": len(self.truncated),
            "tokens": token_stats(np.concatenate([split.train_tokens, split.val_tokens])),
            "tokens_train": int(split.train_tokens.sum()), "answer_tokens": token_stats(split.answer_tokens),
            "histogram": histogram(counted, max_length), "rows_over_max_length": int((counted > max_length).sum()),
            "checks": checks,
        }


def rejected_frame(rejected: list[tuple[str, int, str]], tables: dict[str, SourceTable | None]) -> pd.DataFrame:
    """One row per rejected source row: which file, its row number, the reason, then its original cells
    (for a row that could not be split into cells, its text in `raw`)."""
    import pandas as pd

    parts = [pd.DataFrame({"file": src, "row": [n for n, _, _ in table.unreadable],
                           "reason": [r for _, r, _ in table.unreadable], "raw": [t for _, _, t in table.unreadable]})
             for src, table in tables.items() if table is not None and table.unreadable]
    for src in ("data", "validation"):
        items = [(i, r) for s, i, r in rejected if s == src]
        table = tables[src]
        if not items or table is None:
            continue
        items.sort()
        index = [i for i, _ in items]
        cells = table.frame.iloc[index].reset_index(drop=True)
        for col in cells.columns:
            if cells[col].dtype == object:
                cells[col] = cells[col].map(lambda v: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False,
                                                                                             default=str))
        head = pd.DataFrame({"file": src, "row": table.rows[index], "reason": [r for _, r in items]})
        parts.append(pd.concat([head, cells], axis=1))
    if not parts:
        return pd.DataFrame(columns=["file", "row", "reason"])
    frame = pd.concat(parts, ignore_index=True).sort_values(["file", "row"], kind="stable", ignore_index=True)
    return frame[[c for c in frame.columns if c != "raw"] + (["raw"] if "raw" in frame.columns else [])]


def content_hash(settings: dict[str, Any], train: pa.ListArray, val: pa.ListArray) -> str:
    """sha256 of the settings that shape the rendering and of every message, in order, of both splits."""
    from studio.data.render import field_lists

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for split, messages in (("train", train), ("val", val)):
        offsets, contents = field_lists(messages, "content")
        _, roles = field_lists(messages, "role")
        digest.update(f"\x1d{split}\x1d".encode())
        digest.update(np.asarray(offsets, dtype=np.int64).tobytes())
        for start in range(0, len(contents), 50_000):
            digest.update("\x1f".join(roles.slice(start, 50_000).to_pylist()).encode())
            digest.update("\x1f".join(contents.slice(start, 50_000).to_pylist()).encode())
    return digest.hexdigest()
