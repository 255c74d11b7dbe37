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
