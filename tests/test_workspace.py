import threading

import pytest

from studio.core.errors import InvalidInput
from studio.core.workspace import FOLDERS, Workspace


def test_open_creates_layout_from_env(studio_home):
    ws = Workspace.open()
    assert ws.home == studio_home.resolve()
    assert ws.db_path.exists()
    for name in FOLDERS:
        assert (studio_home / name).is_dir()


def test_flag_overrides_env(tmp_path):
    ws = Workspace.open(tmp_path / "elsewhere")
    assert ws.home == (tmp_path / "elsewhere").resolve()


def test_connection_is_wal_and_per_thread(studio_home):
    ws = Workspace.open()
    with ws.db() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    seen = []

    def worker():  # as a Gradio handler would, from another thread
        with ws.db() as db:
            seen.append(db["datasets"].count)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [0]


def test_unwritable_home_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidInput, match="cannot be created"):
        Workspace.open(blocker / "home")


def test_ids_made_in_the_same_second_never_collide(tmp_path, monkeypatch):
    """A run, export or evaluation id is taken by creating its folder: a repeated random part is retried."""
    import itertools

    from studio.core import files

    draws = itertools.chain(["beef", "beef", "beef"], itertools.repeat("cafe"))
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(draws))
    monkeypatch.setattr(files.time, "strftime", lambda fmt: "20261202-120000")
    first = files.new_folder(tmp_path, "run")
    second = files.new_folder(tmp_path, "run")
    assert (first.name, second.name) == ("run-20261202-120000-beef", "run-20261202-120000-cafe")
    assert first.is_dir() and second.is_dir()


def _hold_write_lock(db_path, seconds: float):
    """Another program (not the studio) holding the database's write lock for a while."""
    import subprocess
    import sys

    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(float(sys.argv[2])); "
            "c.execute('COMMIT')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db_path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_database_locked_for_a_moment_is_waited_for_then_named(studio_home, monkeypatch):
    import subprocess
    import sys

    from studio.core import workspace
    from studio.core.errors import ResourceError

    ws = Workspace.open()
    holder = _hold_write_lock(ws.db_path, 1.0)  # shorter than the wait: the write goes through
    with ws.db() as db:
        db["settings"].insert({"key": "a", "value_json": "1", "updated_at": "now"})
    holder.wait()

    monkeypatch.setattr(workspace, "BUSY_TIMEOUT_S", 0.5)
    holder = _hold_write_lock(ws.db_path, 4.0)  # longer: a clear message, nothing half-written
    with pytest.raises(ResourceError, match="stayed locked by another program") as info, ws.db() as db:
        db["settings"].insert({"key": "b", "value_json": "1", "updated_at": "now"})
    assert "database browser" in info.value.fix
    # the CLI says it in one line, with no traceback
    cli = subprocess.run([sys.executable, "-c", "import sys, studio.core.workspace as w; w.BUSY_TIMEOUT_S = 0.5; "
                          "from studio.cli import main; sys.exit(main(['users', 'allow-targets', 'local']))"],
                         capture_output=True, text=True, env={"STUDIO_HOME": str(studio_home), "PATH": "/usr/bin:/bin"})
    holder.wait()
    assert cli.returncode == 2 and "stayed locked" in cli.stderr and "Traceback" not in cli.stderr
    with ws.db() as db:
        assert [r["key"] for r in db["settings"].rows] == ["a"]
