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

from studio.core import db as schema
from studio.core.errors import InvalidInput, ResourceError
from studio.core.files import is_disk_full
from studio.core.sqlitelib import sqlite_utils

DEFAULT_HOME = Path("~/.llmops-studio")
BUSY_TIMEOUT_S = 30.0  # how long a write waits for another writer (a backup, a DB browser) to let go
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
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S)
        try:
            database = sqlite_utils.Database(conn)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            yield database
            conn.commit()
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc) or "disk i/o error" in str(exc).lower():  # SQLite's words for a failed write
                raise ResourceError(f"The disk of {self.home} is full (or failing): the studio's database cannot be "
                                    "written (nothing was changed).",
                                    "Free space on that drive, then try again.") from exc
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            raise ResourceError(
                f"The studio's database {self.db_path} stayed locked by another program for {BUSY_TIMEOUT_S:.0f} s "
                "(nothing was changed).",
                "Close whatever holds it open for writing (a database browser, a backup, a second studio on the "
                "same workspace), then try again.",
            ) from exc
        finally:
            conn.close()
