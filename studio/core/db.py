"""The SQLite registry: schema as numbered migrations, applied in order and recorded.

Only the studio process writes here. Each migration is a function of a sqlite_utils.Database
named `_mNNN_what`; NNN is its number. Add new ones to MIGRATIONS; never edit one that has shipped.
"""

from __future__ import annotations

import datetime as dt
import time

from studio.core.sqlitelib import sqlite_utils


def _m001_core(db: sqlite_utils.Database) -> None:
    db["datasets"].create(
        {
            "id": str,  # "ds-" + first 12 hex of the content hash
            "name": str,
            "content_hash": str,
            "created_at": str,
            "source_name": str,
            "source_format": str,
            "base_model": str,  # the tokenizer the report was counted with
            "template": str,  # "model" (the base model's own) or a named fallback
            "mapping_json": str,
            "system_prompt": str,
            "max_length": int,
            "rows_train": int,
            "rows_val": int,
            "rows_rejected": int,
            "report_json": str,
            "path": str,
        },
        pk="id",
        not_null={"name", "content_hash", "created_at", "path"},
    )
    db["datasets"].create_index(["content_hash"], unique=True)
    db["runs"].create(
        {
            "id": str,  # "run-YYYYmmdd-HHMMSS-xxxx"; never the OS pid
            "name": str,
            "dataset_id": str,
            "base_model": str,
            "preset": str,
            "config_json": str,
            "status": str,  # queued | running | succeeded | failed | cancelled
            "created_at": str,
            "queued_at": str,
            "started_at": str,
            "finished_at": str,
            "pid": int,
            "proc_start": float,  # the process's start time, to tell a reused pid apart
            "gpu": int,
            "error": str,
            "path": str,
        },
        pk="id",
        foreign_keys=[("dataset_id", "datasets", "id")],
        not_null={"status", "created_at", "path"},
    )
    db["runs"].create_index(["status", "queued_at"])
    db["endpoints"].create(
        {
            "id": str,
            "name": str,
            "kind": str,  # local (a process of ours) | remote (a URL)
            "url": str,
            "base_model": str,
            "adapters_json": str,  # {"name": "run-id or path"}
            "run_id": str,
            "port": int,
            "pid": int,
            "proc_start": float,
            "status": str,  # starting | ready | stopped | failed
            "created_at": str,
            "error": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["deployments"].create(
        {
            "id": str,
            "run_id": str,
            "target": str,
            "url": str,
            "model_version": str,
            "export_hash": str,
            "options_json": str,
            "verification_json": str,
            "status": str,  # publishing | healthy | unhealthy | failed | rolled_back
            "created_at": str,
            "previous_id": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["evaluations"].create(
        {
            "id": str,
            "run_id": str,
            "golden_set": str,
            "created_at": str,
            "summary_json": str,
            "path": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )


def _m003_training(db: sqlite_utils.Database) -> None:
    """Runs: the change that would help a failed run, a notice shown with the run (CPU fallback,
    endpoints unloaded), the last known progress (so the list needs no event files), a pending
    cancel, and how many times the run was started (resumes)."""
    runs = db["runs"]
    runs.add_column("fix", str)
    runs.add_column("notice", str)
    runs.add_column("step", int)
    runs.add_column("max_steps", int)
    runs.add_column("loss", float)
    runs.add_column("eval_loss", float)
    runs.add_column("cancel_requested_at", str)
    runs.add_column("attempts", int)


def _m004_serve(db: sqlite_utils.Database) -> None:
    """Endpoints: launch options (argv, quantize, served name) and when they stopped. Evaluations: what
    kind they are (golden set or held-out split) and the golden set's content hash, so runs can be
    compared on exactly the same questions."""
    db["endpoints"].add_column("options_json", str)
    db["endpoints"].add_column("stopped_at", str)
    db["evaluations"].add_column("kind", str)
    db["evaluations"].add_column("golden_hash", str)
    db["evaluations"].create_index(["golden_hash"])


def _m005_publish(db: sqlite_utils.Database) -> None:
    """Exports (background jobs writing exports/<id>/) and what a deployment needs to be rolled back."""
    db["exports"].create(
        {
            "id": str,  # "exp-YYYYmmdd-HHMMSS-xxxx"
            "run_id": str,
            "kind": str,  # merged | adapter
            "status": str,  # running | succeeded | failed
            "path": str,
            "export_hash": str,  # sha256 over the files of model/ (names and contents)
            "bytes": int,
            "dtype": str,
            "pid": int,
            "proc_start": float,
            "created_at": str,
            "finished_at": str,
            "error": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
        not_null={"run_id", "kind", "status", "path", "created_at"},
    )
    db["exports"].create_index(["run_id", "kind"])
    deployments = db["deployments"]
    deployments.add_column("slot", str)  # the place a rollback puts the previous version back into
    deployments.add_column("export_id", str)
    deployments.add_column("model_name", str)  # what clients send as `model` / adapter_id ("" = default)
    deployments.add_column("error", str)
    deployments.add_column("updated_at", str)
    deployments.create_index(["slot", "created_at"])


def _m006_supervision(db: sqlite_utils.Database) -> None:
    """Runs: the launcher that started the run (local process today; multi-GPU or a cluster later) and its
    handle there when that is not a local pid (a cluster job id). Deployments: the process doing the
    publishing, so one left "publishing" by a crash is found and failed on the next start."""
    runs = db["runs"]
    runs.add_column("launcher", str)
    runs.add_column("launch_ref", str)
    deployments = db["deployments"]
    deployments.add_column("owner_pid", int)
    deployments.add_column("owner_start", float)


def _m007_accounts(db: sqlite_utils.Database) -> None:
    """Accounts with roles, the audit log, studio-wide settings, and who made each dataset, run and
    deployment ("" for what was made before accounts existed)."""
    db["users"].create(
        {"name": str, "password_hash": str, "role": str, "created_at": str, "created_by": str,
         "updated_at": str},
        pk="name", not_null={"password_hash", "role", "created_at"},
    )
    db["audit"].create(
        {"id": int, "at": str, "actor": str, "role": str, "origin": str, "action": str, "target": str,
         "detail_json": str},
        pk="id", not_null={"at", "actor", "action"},
    )
    db["audit"].create_index(["at"])
    db["settings"].create({"key": str, "value_json": str, "updated_at": str}, pk="key")
    for table in ("datasets", "runs", "deployments"):
        db[table].add_column("created_by", str)


def _m008_multiprocess_runs(db: sqlite_utils.Database) -> None:
    """Runs: every GPU a run of several processes holds ("0,1"; `gpu` stays its first), so the queue
    starts other runs only on the GPUs left free."""
    db["runs"].add_column("devices", str)


MIGRATIONS = [_m001_core, _m003_training, _m004_serve, _m005_publish, _m006_supervision, _m007_accounts,
              _m008_multiprocess_runs]


def _number(step) -> int:
    return int(step.__name__[2:5])


def migrate(db: sqlite_utils.Database) -> list[int]:
    """Apply the migrations this database has not seen; return their numbers."""
    db.execute("PRAGMA foreign_keys = ON")
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"number": int, "name": str, "applied_at": str}, pk="number")
    done = {row["number"] for row in db["_migrations"].rows}
    applied = []
    steps = sorted(MIGRATIONS, key=_number)
    if len({_number(s) for s in steps}) != len(steps):
        raise RuntimeError("two migrations share a number")
    for step in steps:
        number = _number(step)
        if number in done:
            continue
        with db.conn:
            step(db)
            db["_migrations"].insert(
                {"number": number, "name": step.__name__, "applied_at": now()}
            )
        applied.append(number)
    return applied


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def seconds_since(stamp: str | None) -> float | None:
    """Seconds from a `now()` stamp until now; None when there is no (readable) stamp."""
    if not stamp:
        return None
    try:
        return time.time() - dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
