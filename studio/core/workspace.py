"""The workspace: STUDIO_HOME with studio.db and the folders for datasets, runs, models, endpoints.

A Workspace is a small value passed to every core call; it holds paths, never an open connection.
Each unit of work opens its own SQLite connection (`with ws.db() as db:`), because a sqlite3
connection is bound to the thread that made it and Gradio calls handlers from worker threads.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from studio.core import db as schema
from studio.core.errors import InvalidInput

DEFAULT_HOME = Path("~/.llmops-studio")
FOLDERS = ("datasets", "runs", "models", "endpoints", "exports", "evaluations")


def default_home() -> Path:
    return Path(os.environ.get("STUDIO_HOME") or DEFAULT_HOME).expanduser()


@dataclass(frozen=True)
class Workspace:
    home: Path

    @classmethod
    def open(cls, home: str | Path | None = None) -> Workspace:
        """Create (if needed) and migrate the workspace at `home`, or STUDIO_HOME, or the default."""
        ws = cls(Path(home).expanduser().resolve() if home else default_home().resolve())
        try:
            ws.home.mkdir(parents=True, exist_ok=True)
            for name in FOLDERS:
                (ws.home / name).mkdir(exist_ok=True)
        except OSError as exc:
            raise InvalidInput(
                f"The workspace folder {ws.home} cannot be created or written ({exc.strerror}).",
                "Choose another folder with --home or STUDIO_HOME.",
            ) from exc
        with ws.db() as db:
            schema.migrate(db)
        return ws

    @property
    def db_path(self) -> Path:
        return self.home / "studio.db"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def endpoints_dir(self) -> Path:
        return self.home / "endpoints"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def evaluations_dir(self) -> Path:
        return self.home / "evaluations"

    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite_utils.Database]:
        """A fresh connection for one unit of work: WAL, foreign keys on, closed afterwards."""
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            database = sqlite_utils.Database(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            yield database
            conn.commit()
        finally:
            conn.close()
