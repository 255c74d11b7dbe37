import sqlite3

import pytest
import sqlite_utils

from studio.core.db import MIGRATIONS, _number, migrate


def memory_db():
    return sqlite_utils.Database(memory=True)


def test_migrations_apply_in_order_and_once():
    db = memory_db()
    applied = migrate(db)
    assert applied == sorted(_number(m) for m in MIGRATIONS)
    assert migrate(db) == []
    numbers = [r["number"] for r in db["_migrations"].rows_where(order_by="number")]
    assert numbers == applied
    assert {"datasets", "runs", "endpoints", "deployments", "evaluations"} <= set(db.table_names())


def test_foreign_keys_are_enforced():
    db = memory_db()
    migrate(db)
    with pytest.raises(sqlite3.IntegrityError):
        db["runs"].insert(
            {"id": "run-1", "dataset_id": "ds-missing", "status": "queued", "created_at": "x", "path": "/x"}
        )


def test_dataset_hash_is_unique():
    db = memory_db()
    migrate(db)
    row = {"id": "ds-a", "name": "a", "content_hash": "h", "created_at": "t", "path": "/a"}
    db["datasets"].insert(row)
    with pytest.raises(sqlite3.IntegrityError):
        db["datasets"].insert({**row, "id": "ds-b"})


def test_a_workspace_from_before_a_migration_keeps_its_rows():
    """An existing studio.db (made by an earlier version) gains the new columns and loses nothing."""
    from studio.core import db as schema

    db = memory_db()
    earlier = [m for m in MIGRATIONS if _number(m) <= 5]
    original, schema.MIGRATIONS = schema.MIGRATIONS, earlier
    try:
        migrate(db)
    finally:
        schema.MIGRATIONS = original
    db["datasets"].insert({"id": "ds-a", "name": "a", "content_hash": "h", "created_at": "t", "path": "/a"})
    db["runs"].insert({"id": "run-1", "dataset_id": "ds-a", "status": "running", "created_at": "t", "path": "/r",
                       "pid": 123, "proc_start": 1.5})
    db["deployments"].insert({"id": "dep-1", "run_id": "run-1", "status": "publishing", "target": "local"})
    assert migrate(db) == sorted(_number(m) for m in MIGRATIONS if _number(m) > 5)  # 6, 7, 8, ...
    run = db["runs"].get("run-1")
    assert (run["status"], run["pid"], run["proc_start"], run["launcher"], run["launch_ref"], run["created_by"]) == \
        ("running", 123, 1.5, None, None, None)
    assert db["deployments"].get("dep-1")["owner_pid"] is None
    assert run["devices"] is None  # 8: a run from before holds its one GPU (gpu) only
    assert db["datasets"].get("ds-a")["created_by"] is None  # made before accounts: by nobody on record
    assert {"users", "audit", "settings"} <= set(db.table_names())
