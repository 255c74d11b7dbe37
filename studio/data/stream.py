"""The question/answer import, one batch at a time: a file of any length is read, checked and split holding one
batch of text (STUDIO_IMPORT_BATCH_ROWS rows) and ~40 bytes a row of keys and counts.

Pass 1 reads each batch (studio/data/readers), builds its chats, checks them (duplicates against the hashes of
every earlier batch: studio/data/checks.py) and appends the kept chats to a spool: kept in memory up to
SPOOL_MEMORY_MB, else in a Parquet file in a hidden folder of the workspace's datasets folder. The split is
then decided on the hashed question keys; the content hash and the preview read the spool back, and `save`
streams it into the version's train.parquet and val.parquet (studio/data/store.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from studio.core.errors import InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa

    from studio.data.split import Kept, Outcome

SPOOL_MEMORY_MB = 64  # kept chats held in memory before they go to disk (STUDIO_IMPORT_SPOOL_MB)
STALE_SPOOL_S = 24 * 3600  # a spool folder this old was left by a killed import


class Spool:
    """The kept chats of one file, in order: in memory while small, then appended to a Parquet file."""

    def __init__(self, folder: SpoolFolder, what: str) -> None:
        self.folder, self.what = folder, what
        self.batches: list[pa.ListArray] = []
        self.bytes = self.rows = 0
        self.path: Path | None = None
        self.writer = None
        self.limit = int(float(os.environ.get("STUDIO_IMPORT_SPOOL_MB") or SPOOL_MEMORY_MB) * (1 << 20))

    def add(self, messages: pa.ListArray) -> None:
        from studio.core.files import disk_full_says

        if not len(messages):
            return
        self.rows += len(messages)
        self.batches.append(messages)
        self.bytes += messages.nbytes
        if self.bytes > self.limit:
            with disk_full_says(f"checking {self.what} (the kept rows wait on disk until saved)", self.folder.parent):
                self._spill()

    def _spill(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            self.path = self.folder.get() / f"{self.what.replace(' ', '-')}.parquet"
            self.writer = pq.ParquetWriter(self.path, pa.schema([("messages", self.batches[0].type)]),
                                           compression="lz4")
        for messages in self.batches:
            self.writer.write_table(pa.table({"messages": messages}))
        self.batches, self.bytes = [], 0

    def close(self) -> None:
        if self.writer is not None:
            self._spill()
            self.writer.close()
            self.writer = None

    def read(self) -> Iterator[pa.ListArray]:
        """The chats in order, a batch at a time."""
        import pyarrow.parquet as pq

        if self.path is not None:
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=8192):
                yield batch.column(0)
        yield from self.batches


@dataclass
class Selection:
    """Some rows of a spool, in order: `mask` (one bool a spooled row; None: all of them)."""

    spool: Spool
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return self.spool.rows if self.mask is None else int(self.mask.sum())

    def batches(self) -> Iterator[pa.ListArray]:
        import pyarrow as pa

        start = 0
        for messages in self.spool.read():
            end = start + len(messages)
            if self.mask is None:
                yield messages
            else:
                picked = np.flatnonzero(self.mask[start:end])
                if len(picked):
                    yield messages if len(picked) == len(messages) else messages.take(pa.array(picked))
            start = end

    def head(self, n: int) -> list[list[dict]]:
        out: list[list[dict]] = []
        for messages in self.batches():
            out += messages.slice(0, n - len(out)).to_pylist()
            if len(out) >= n:
                break
        return out

    def write(self, path: Path, message_type: pa.DataType) -> int:
        """Stream the rows into a Parquet file (row groups of one batch); returns how many."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = 0
        with pq.ParquetWriter(path, pa.schema([("messages", message_type)])) as writer:
            for messages in self.batches():
                writer.write_table(pa.table({"messages": messages.cast(message_type)}))
                rows += len(messages)
        return rows


@dataclass
class Splits:
    """The training and validation rows of a prepared import, still in their spools: what `save` writes."""

    train: Selection
    val: Selection
    folder: SpoolFolder

    def write(self, folder: Path) -> tuple[int, int]:
        from studio.data.mapping import message_type

        return (self.train.write(folder / "train.parquet", message_type()),
                self.val.write(folder / "val.parquet", message_type()))


class SpoolFolder:
    """The hidden folder of an import's spools in the datasets folder (the disk the version goes to), made only
    when a spool outgrows memory and removed when the prepared import is dropped; one left by a killed import
    is cleared by the next import a day later."""

    def __init__(self, datasets_dir: Path) -> None:
        self.parent, self.path = datasets_dir, None

    def get(self) -> Path:
        if self.path is None:
            self.parent.mkdir(parents=True, exist_ok=True)
            for old in self.parent.glob(".spool-*"):
                try:
                    if time.time() - old.stat().st_mtime > STALE_SPOOL_S:
                        shutil.rmtree(old, ignore_errors=True)
                except OSError:
                    pass
            self.path = Path(tempfile.mkdtemp(prefix=".spool-", dir=self.parent))
        return self.path

    def remove(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def check_file(file: str, source, mapping: dict[str, str], system_prompt: str | None, tokenizer, outcome: Outcome,
               spool: Spool, kept: Kept, *, max_length: int, length_policy: str, batch_rows: int,
               leak_keys: np.ndarray | None = None) -> bool:
    """Pass 1 over one file: every batch built, checked, counted into `outcome`, its kept chats spooled and
    their keys kept. With `leak_keys` (the sorted question keys of the training file), rows whose question is a
    training question are rejected as leaked. Returns whether every token count came from the fast path."""
    from studio.data.checks import Seen, check_conversations
    from studio.data.ingest import release_memory
    from studio.data.mapping import build_conversations

    seen, linear = Seen(), True
    for table in batches_of(source, batch_rows):
        outcome.source(file, table)
        if not len(table.frame):
            outcome.add_unreadable(file, table)
            continue
        checked = check_conversations(
            tokenizer, build_conversations(table, mapping, system_prompt), max_length=max_length,
            length_policy=length_policy, row_numbers=table.rows, row_label=table.row_label, seen=seen,
        )
        linear &= checked.tokens_linear
        if leak_keys is not None and len(leak_keys):
            _reject_leaks(checked, leak_keys)
        outcome.add(file, table, checked)
        spool.add(checked.kept.messages)
        kept.add(table.rows[checked.kept.index], checked)
        del checked, table
        release_memory()
    spool.close()
    rows = outcome.sources.get(file, {}).get("rows", 0)
    if not rows:
        name = getattr(source, "name", "the file")
        raise InvalidInput(f"'{name}' has column names but no rows of data.",
                           "Add rows under the header and upload again.")
    return linear


def _reject_leaks(checked, leak_keys: np.ndarray) -> None:
    """Validation rows whose question is also a training question: rejected, as an uploaded file's leak."""
    leaks = np.flatnonzero(np.isin(checked.question_hash, leak_keys))
    if not len(leaks):
        return
    for pos in leaks:
        index = int(checked.kept.index[pos])
        checked.rejected.append((index, "the same question is in the training data"))
        checked.reasons.setdefault("leaked into validation", []).append(index)
    keep = np.setdiff1d(np.arange(len(checked.kept)), leaks)  # their warnings stay, as for any checked row
    checked.kept = checked.kept.take(keep)
    checked.question_hash, checked.answer_hash = checked.question_hash[keep], checked.answer_hash[keep]
    checked.tokens, checked.answer_tokens = checked.tokens[keep], checked.answer_tokens[keep]


def prepare_sft(ws, table, mapping, val_table, val_mapping, tokenizer, *, system_prompt, base_model, template,
                max_length, length_policy, val_fraction, val_size, seed, name, preview_rows, batch_rows,
                model_context) -> dict[str, Any]:
    """importer.prepare for question/answer rows: the fields of an importer.Prepared (its spools in `splits`)."""
    from studio.data.checks import conflicting_answers, split_rows
    from studio.data.ingest import release_memory
    from studio.data.render import preview_tokens
    from studio.data.split import Kept, Outcome, content_hash

    folder = SpoolFolder(ws.datasets_dir)
    try:
        outcome, main = Outcome(), Kept()
        spools = {"data": Spool(folder, "data"), "validation": Spool(folder, "validation")}
        common = dict(max_length=max_length, length_policy=length_policy, batch_rows=batch_rows)
        check_file("data", table, mapping, system_prompt, tokenizer, outcome, spools["data"], main, **common)
        if val_table is None:
            is_val = split_rows(main.question, val_fraction=val_fraction, val_size=val_size, seed=seed)
            train, val = Selection(spools["data"], ~is_val), Selection(spools["data"], is_val)
            train_tokens, val_tokens, answer_tokens = main.tokens[~is_val], main.tokens[is_val], main.answer_tokens
            leaks = int(np.isin(main.question[is_val], main.question[~is_val]).sum())
            share = f"{val_size} rows" if val_size is not None else f"{val_fraction:g} of the rows"
            how = f"seeded split (seed {seed}, {share})"
            train_rows = main.rows[~is_val]
        else:
            other = Kept()
            check_file("validation", val_table, val_mapping, system_prompt, tokenizer, outcome, spools["validation"],
                       other, leak_keys=np.unique(main.question), **common)
            train, val = Selection(spools["data"]), Selection(spools["validation"])
            train_tokens, val_tokens = main.tokens, other.tokens
            answer_tokens = np.concatenate([main.answer_tokens, other.answer_tokens])
            leaks, how, train_rows = 0, f"uploaded file {outcome.sources['validation']['name']}", main.rows
        conflicting = main.rows[conflicting_answers(main.question, main.answer)]
        if len(conflicting):
            outcome.warnings.setdefault("same question, different answers", []).append(conflicting)
        release_memory()
        source = outcome.sources["data"]
        sources = [source] + ([outcome.sources["validation"]] if val_table is not None else [])
        report = {
            "source": source, "validation_source": how,
            "validation_file": outcome.sources.get("validation") if val_table is not None else None,
            "mapping": mapping, "system_prompt": (system_prompt or "").strip(),
            "base_model": base_model, "template": template, "max_length": max_length,
            "length_policy": length_policy, "seed": seed,
            "rows_in": sum(s["rows"] + s["unreadable_rows"] for s in sources),
            "rows_train": len(train), "rows_val": len(val), "rows_rejected": outcome.rejected_count,
            "model_context": model_context,
            **outcome.report(train_tokens, val_tokens, answer_tokens, leaks, max_length),
        }
        label = outcome.label
        previews = [{"row": int(row), "row_label": label, **preview_tokens(tokenizer, chat)}
                    for row, chat in zip(train_rows[:preview_rows], train.head(preview_rows), strict=False)]
        template_text = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else json.dumps(
            tokenizer.chat_template)
        settings = {"base_model": base_model, "template": template,
                    "template_sha256": hashlib.sha256(template_text.encode()).hexdigest(),
                    "max_length": max_length, "length_policy": length_policy}
        fields = {
            "source_name": source["name"], "source_format": source["format"], "base_model": base_model,
            "template": template, "mapping": mapping, "system_prompt": (system_prompt or "").strip(),
            "max_length": max_length, "rows_rejected": outcome.rejected_count, "report": report,
        }
        return dict(
            name=(name or Path(source["name"]).stem).strip() or "dataset", train=None, val=None, report=report,
            rejected=outcome.rejected_frame(), previews=previews,
            content_hash=content_hash(settings, train.batches(), val.batches()), fields=fields,
            template_text=template_text, splits=Splits(train, val, folder),
        )
    except BaseException:
        folder.remove()
        raise


def batches_of(source, batch_rows: int) -> Iterator[Any]:
    """The batches of a SourceTable (sliced) or of a FileSource (streamed from disk)."""
    from studio.data.table import SourceTable

    if isinstance(source, SourceTable):
        yield from source.slices(batch_rows)
    else:
        yield from source.batches()


def cleanup_when_dropped(owner: Any, folder: SpoolFolder) -> None:
    weakref.finalize(owner, folder.remove)
