"""Faults lose nothing: kill -9 at several points of an import and of an export, a disk that fills while a
dataset is saved, then a fresh start. Nothing saved before is lost or damaged, nothing half-written is
visible, every entity ends in a true state, and the interrupted work goes through when retried once.
(Training killed mid-run and the studio killed under a run: test_training_lifecycle.py; a publish killed
midway: test_publish_local.py; an endpoint killed: test_endpoints.py; a full disk during an export:
test_export.py; the database held locked: test_workspace.py.)"""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from browser import ROOT
from conftest import FAQ_PAIRS, save_qa_dataset

from studio.core.workspace import Workspace

pytestmark = pytest.mark.slow


def big_csv(path, rows: int):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["question", "answer"])
        for i in range(rows):
            q, a = FAQ_PAIRS[i % len(FAQ_PAIRS)]
            out.writerow([f"{q} (case {i})", f"{a} Reference {i}."])
    return path


def studio(home, *args, limit_bytes: int | None = None) -> subprocess.Popen:
    def limited():  # a disk that is full past `limit_bytes` per file: writes beyond it fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "STUDIO_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "studio", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT, preexec_fn=limited if limit_bytes else None)


def visible_state(ws) -> dict:
    """What a user can see: the registry's versions, each with its complete folder, and no other folder."""
    with ws.db() as db:
        rows = {r["id"]: r for r in db["datasets"].rows}
    folders = {p.name for p in ws.datasets_dir.iterdir() if not p.name.startswith(".")}
    assert folders == set(rows), f"folders {folders} but registered {set(rows)}"
    for vid in rows:
        names = {p.name for p in (ws.datasets_dir / vid).iterdir()}
        assert {"train.parquet", "val.parquet", "meta.json"} <= names, (vid, names)
        assert json.loads((ws.datasets_dir / vid / "meta.json").read_text())["id"] == vid
    return rows


def test_an_import_killed_at_any_point_leaves_the_workspace_whole_and_retries_cleanly(ws, tmp_path):
    before = save_qa_dataset(ws, FAQ_PAIRS[:10], name="saved before", val_pairs=2)
    path = big_csv(tmp_path / "big.csv", 2500)
    started = time.monotonic()
    full = studio(ws.home, "data", "import", str(path), "--json")
    out, err = full.communicate(timeout=300)
    took = time.monotonic() - started
    assert full.returncode == 0, err
    done = json.loads(out)["version"]
    # start over from an empty workspace beside the first version, killing the import ever later in its life
    subprocess.run([sys.executable, "-m", "studio", "data", "rm", done["id"]], check=True, cwd=ROOT,
                   env={**os.environ, "STUDIO_HOME": str(ws.home)}, capture_output=True)
    for fraction in (0.5, 0.85, 0.97):
        proc = studio(ws.home, "data", "import", str(path), "--json")
        time.sleep(took * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        state = visible_state(Workspace.open(ws.home))
        assert before.id in state  # what was saved before is untouched
        assert set(state) <= {before.id, done["id"]}  # a version is there whole, or not at all
        if done["id"] in state:  # the kill came after the commit: remove it to try an earlier point again
            subprocess.run([sys.executable, "-m", "studio", "data", "rm", done["id"]], check=True, cwd=ROOT,
                           env={**os.environ, "STUDIO_HOME": str(ws.home)}, capture_output=True)
    retry = studio(ws.home, "data", "import", str(path), "--json")
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, err
    assert json.loads(out)["version"]["id"] == done["id"]  # one action, the same version as an uninterrupted import
    assert set(visible_state(Workspace.open(ws.home))) == {before.id, done["id"]}


def test_a_disk_that_fills_while_a_dataset_is_saved_says_so_and_keeps_the_workspace(ws, tmp_path):
    before = save_qa_dataset(ws, FAQ_PAIRS[:10], name="saved before", val_pairs=2)
    path = big_csv(tmp_path / "big.csv", 3000)
    proc = studio(ws.home, "data", "import", str(path), limit_bytes=48_000)  # the train split is larger
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out, err)
    assert "The disk filled up while saving the dataset version 'big'" in err and "nothing was saved" in err
    assert "Free space on the drive" in err and "Traceback" not in err
    assert set(visible_state(Workspace.open(ws.home))) == {before.id}
    assert not [p for p in ws.datasets_dir.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_an_export_killed_midway_fails_with_its_reason_and_a_retry_succeeds(trained_run):
    from studio.publishing import export
    from studio.publishing.pipeline import ensure_export
    from studio.publishing.source import finished_run

    ws = trained_run.ws
    source = finished_run(ws, trained_run.run_id)
    job = export.start_export(ws, source, "merged", prompts=[[{"role": "user", "content": "Do you ship abroad?"}]])
    deadline = time.monotonic() + 60
    while not (job.folder / "events.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker is up and working
    os.killpg(job.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (current := export.refresh(ws, export.get_export(ws, job.id))).status == "running":
        assert time.monotonic() < deadline, "the killed export is still 'running'"
        time.sleep(0.2)
    assert current.status == "failed" and current.error, current
    assert "signal 9" in current.error or "killed" in current.error.lower()
    assert export.reusable_export(ws, source.run_id, "merged") is None or \
        export.reusable_export(ws, source.run_id, "merged").id != job.id  # the broken one is never reused
    assert not (current.folder / "model").exists()  # nothing half-written where an export is read from
    again = ensure_export(ws, source, "merged", fresh=True, timeout=300)  # what publish does, once
    assert again.status == "succeeded" and (again.model_dir / "config.json").exists()
    assert export.reusable_export(ws, source.run_id, "merged").id == again.id


def test_a_full_disk_when_a_run_is_queued_or_the_database_grows_is_said_plainly(ws):
    data = save_qa_dataset(ws, FAQ_PAIRS[:10], name="saved before", val_pairs=2)
    with ws.db() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the log empty: any new write has to grow a file
    runs_before = sorted(p.name for p in ws.runs_dir.iterdir())
    # a disk this full leaves SQLite no room for its shared-memory index: nothing can be recorded
    for argv in (["train", "--data", data.id, "--model", "demo-tiny", "--preset", "quick-test"],
                 ["users", "add", "dora", "--role", "viewer"]):
        proc = studio(ws.home, *argv, limit_bytes=1500)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (argv, out, err)
        assert "is full (or failing): the studio's database cannot be written" in err, err
        assert "Free space on that drive" in err and "Traceback" not in err
    assert sorted(p.name for p in ws.runs_dir.iterdir()) == runs_before  # no half-made run folder
    with ws.db() as db:
        assert db["runs"].count == 0 and db["users"].count == 0 and db["datasets"].count == 1
