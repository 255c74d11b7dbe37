"""Dataset versions on disk and in the registry: the contract between the Data tab and training.

A version is a folder `datasets/<id>/` with `train.parquet` and `val.parquet` (for SFT one column,
`messages`: a list of {"role", "content"} — system?, user, assistant, ... ending with the
assistant's answer; preference and KTO versions hold the columns in studio/data/kinds.py), `meta.json`
(the registry row) and, when rows were rejected, `rejected.csv`.
Versions are immutable and content-addressed: the id is "ds-" + the first 12 hex digits of the
content hash, so saving the same content twice finds the existing version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from studio.core import access, audit
from studio.core.db import now
from studio.core.errors import Conflict, NotFound
from studio.core.files import disk_full_says

if TYPE_CHECKING:
    import datasets

    from studio.core.workspace import Workspace

SPLITS = ("train", "val")


class DatasetVersion(BaseModel):
    id: str
    name: str
    content_hash: str
    created_at: str
    source_name: str = ""
    source_format: str = ""
    base_model: str = ""
    template: str = ""
    mapping: dict[str, Any] = {}
    system_prompt: str = ""
    max_length: int = 0
    rows_train: int = 0
    rows_val: int = 0
    rows_rejected: int = 0
    report: dict[str, Any] = {}
    path: str
    created_by: str | None = None  # the account that saved it (the machine's user from the CLI)

    @classmethod
    def from_row(cls, row: dict) -> DatasetVersion:
        row = dict(row)
        row["mapping"] = json.loads(row.pop("mapping_json") or "{}")
        row["report"] = json.loads(row.pop("report_json") or "{}")
        return cls.model_validate({k: v for k, v in row.items() if v is not None})

    def to_row(self) -> dict:
        row = self.model_dump(exclude={"mapping", "report"})
        row["mapping_json"] = json.dumps(self.mapping)
        row["report_json"] = json.dumps(self.report)
        return row

    def split_path(self, split: str) -> Path:
        return Path(self.path) / f"{split}.parquet"

    @property
    def kind(self) -> str:
        """sft, preference or kto (studio.data.kinds), told by the columns of the training split."""
        import pyarrow.parquet as pq

        from studio.data.kinds import kind_of

        try:
            return kind_of(pq.read_schema(self.split_path("train")).names)
        except OSError:
            return str(self.report.get("kind") or "sft")


def version_id(content_hash: str) -> str:
    return "ds-" + content_hash[:12]


def find_by_hash(ws: Workspace, content_hash: str) -> DatasetVersion | None:
    with ws.db() as db:
        rows = list(db["datasets"].rows_where("content_hash = ?", [content_hash]))
    return DatasetVersion.from_row(rows[0]) if rows else None


def save_version(
    ws: Workspace,
    *,
    content_hash: str,
    name: str,
    train: datasets.Dataset | None,
    val: datasets.Dataset | None,
    rejected_csv: bytes | None = None,
    extra_files: dict[str, bytes] | None = None,
    write_splits: Callable[[Path], tuple[int, int]] | None = None,
    **fields: Any,
) -> tuple[DatasetVersion, bool]:
    """Write a new version atomically and register it; return (version, created).

    The splits are `train` and `val`, or written by `write_splits(folder)` (which returns their row counts):
    the import streams them from its spool, a batch at a time.

    `extra_files` are written beside the splits (the chat template, the histogram): provenance only.

    An existing version with the same content hash is returned as it is (created=False).
    Files are written to a temporary folder and renamed into place before the registry row is
    inserted, so a failure leaves neither a half-written folder nor a dangling row.
    """
    actor = access.require(ws, "data.import")
    existing = find_by_hash(ws, content_hash)
    if existing is not None:
        return existing, False
    with disk_full_says(f"saving the dataset version '{name}'", ws.datasets_dir):
        version = _write_version(ws, version_id(content_hash), name, content_hash, train, val, rejected_csv,
                                 extra_files, actor, fields, write_splits)
    audit.record(ws, "data.import", version.id, name=name, rows_train=version.rows_train, rows_val=version.rows_val)
    return version, True


def _write_version(ws, vid, name, content_hash, train, val, rejected_csv, extra_files, actor, fields,
                   write_splits=None):
    import pyarrow.parquet as pq

    target = ws.datasets_dir / vid
    tmp = Path(tempfile.mkdtemp(prefix=f".{vid}-", dir=ws.datasets_dir))
    try:
        if write_splits is not None:
            rows_train, rows_val = write_splits(tmp)
        else:
            for split, rows in (("train", train), ("val", val)):  # as Arrow: honours select()/filter() indices
                pq.write_table(rows.with_format("arrow")[:], tmp / f"{split}.parquet")
            rows_train, rows_val = len(train), len(val)
        if rejected_csv:
            (tmp / "rejected.csv").write_bytes(rejected_csv)
        for file_name, content in (extra_files or {}).items():
            (tmp / Path(file_name).name).write_bytes(content)
        version = DatasetVersion(
            id=vid, name=name, content_hash=content_hash, created_at=now(), path=str(target),
            rows_train=rows_train, rows_val=rows_val, created_by=actor.name, **fields,
        )
        (tmp / "meta.json").write_text(version.model_dump_json(indent=2))
        if target.exists():  # left by a crash between rename and insert: not registered, so stale
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        with ws.db() as db:
            db["datasets"].insert(version.to_row())
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return version


def get_version(ws: Workspace, dataset_id: str) -> DatasetVersion:
    with ws.db() as db:
        rows = list(db["datasets"].rows_where("id = ?", [dataset_id]))
    if not rows:
        raise NotFound(f"There is no dataset version '{dataset_id}'.", "See `studio data list` for the saved ones.")
    return DatasetVersion.from_row(rows[0])


def list_versions(ws: Workspace) -> list[DatasetVersion]:
    with ws.db() as db:
        rows = list(db["datasets"].rows_where(order_by="created_at desc, rowid desc"))  # same second: later first
    return [DatasetVersion.from_row(r) for r in rows]


def load_split(ws: Workspace, dataset_id: str, split: str = "train") -> datasets.Dataset:
    """One split of a version as a `datasets.Dataset` with the `messages` column (in memory, no cache files)."""
    import datasets
    import pyarrow.parquet as pq

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    version = get_version(ws, dataset_id)
    return datasets.Dataset(pq.read_table(version.split_path(split)))


def rename_version(ws: Workspace, dataset_id: str, name: str) -> DatasetVersion:
    access.require(ws, "data.rename")
    get_version(ws, dataset_id)
    with ws.db() as db:
        db["datasets"].update(dataset_id, {"name": name.strip() or dataset_id})
    audit.record(ws, "data.rename", dataset_id, name=name.strip())
    return get_version(ws, dataset_id)


def delete_version(ws: Workspace, dataset_id: str) -> None:
    """Delete a version and its files; refused while any run refers to it."""
    access.require(ws, "data.delete")
    version = get_version(ws, dataset_id)
    with ws.db() as db:
        users = [r["id"] for r in db["runs"].rows_where("dataset_id = ?", [dataset_id], select="id")]
        if users:
            raise Conflict(
                f"Dataset '{version.name}' ({dataset_id}) is used by {len(users)} run(s): {', '.join(users[:5])}.",
                "Delete those runs first; a run must always be able to show what it was trained on.",
            )
        db["datasets"].delete(dataset_id)
    shutil.rmtree(version.path, ignore_errors=True)
    audit.record(ws, "data.delete", dataset_id, name=version.name)
