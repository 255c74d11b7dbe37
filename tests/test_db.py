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
