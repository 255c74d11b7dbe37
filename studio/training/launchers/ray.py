"""The Ray launcher: a run submitted as a job to a Ray cluster through its job submission API.

What travels (the job's runtime_env): the run folder's inputs (config.yaml, manifest.json, events.jsonl,
start-adapter/, the last checkpoint), the dataset version's files, a base model that is a local folder
(a hub id is downloaded by the node itself), and the studio's own code (py_modules), so the node runs the
same `python -m studio.training RUN_DIR`, wrapped by studio/training/relay.py. What comes back: relay.py
prints events, status and finally the adapter into the job's log; `poll` reads that log through the
dashboard and brings the local run folder up to date, so only the dashboard address has to be reachable.
What stays local: the registry, the run folder, chat and publishing.

The run folder holds `remote.json` (the address, the job id, where this attempt's log starts in train.log,
a lost connection): with the Handle's `ref` (the job id) that is all a restarted studio needs to re-attach.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import secrets
import shutil
import signal
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.core.db import now
from studio.core.errors import ResourceError
from studio.core.files import read_json, write_json_atomic
from studio.core.procs import Ending
from studio.training import cluster
from studio.training.folder import TERMINAL_STATES
from studio.training.launchers.base import Attempt, Handle, Launcher
from studio.training.relay import MARK

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

STOP_WAIT_S = 180  # Ray's grace between the stop's SIGTERM and its SIGKILL (its default, 3 s, cuts the save)
MAX_PACKAGE = 500 * 1024**2  # Ray refuses a working dir over 512 MiB (one gRPC message)
AGENT_WAIT_S = 60  # "No available agent to submit job, please try again later" (a head just started)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _remote(attempt: Attempt) -> dict[str, Any]:
    return read_json(attempt.folder.path / "remote.json")


def _save_remote(attempt: Attempt, record: dict[str, Any]) -> None:
    write_json_atomic(attempt.folder.path / "remote.json", record)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


class RayLauncher(Launcher):
    name = "ray"
    remote = True

    def prepare(self, ws: Workspace, options: dict[str, Any]) -> dict[str, Any]:
        """At submit, before anything is queued: the cluster must answer. Returns what the run folder's
        manifest records under "launch" (the address, the GPUs the job asks for)."""
        address = options.get("ray_address") or cluster.configured(ws)[0]
        if not address:
            raise ResourceError("No Ray cluster address is set.",
                                f"Give --ray-address http://HOST:8265, set {cluster.ENV}, or set it in the "
                                "System tab.")
        facts = cluster.check(address)
        gpus = 1 if facts["gpus"] >= 1 else 0
        return {"launcher": self.name, "address": facts["address"], "gpus": gpus,
                "cluster": {k: facts[k] for k in ("ray_version", "cpus", "gpus", "memory_gb")}}

    # ------------------------------------------------------------------------------------ start

    def start(self, attempt: Attempt) -> Handle:
        folder = attempt.folder
        manifest = folder.read_manifest()
        launch = manifest.get("launch") or {}
        address = cluster.normalize(launch.get("address") or "")
        jobs = cluster.client(address)
        logging.getLogger("ray").setLevel(logging.WARNING)  # not a line per package uploaded on the studio's console
        folder.status.unlink(missing_ok=True)  # the previous attempt's status and ending are not this one's
        folder.exit.unlink(missing_ok=True)
        job_id = f"studio-{attempt.run_id}-{attempt.number}-{secrets.token_hex(3)}"
        with tempfile.TemporaryDirectory(prefix="studio-ray-") as tmp:
            stage = self._stage(folder.path, manifest, Path(tmp))
            import studio

            runtime_env = {
                "working_dir": str(stage.parent),
                "py_modules": [str(Path(studio.__file__).parent)],  # the same studio code as this one
                "excludes": ["__pycache__", "*.pyc"],
                "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), "TOKENIZERS_PARALLELISM": "false",
                             "PYTHONUNBUFFERED": "1"},
            }
            deadline = time.monotonic() + AGENT_WAIT_S
            while True:
                try:
                    jobs.submit_job(entrypoint=f"python -m studio.training.relay {folder.path.name}",
                                    submission_id=job_id, runtime_env=runtime_env,
                                    entrypoint_num_gpus=launch.get("gpus") or 0, entrypoint_num_cpus=1,
                                    metadata={"studio_run": attempt.run_id, "attempt": str(attempt.number)})
                    break
                except ValueError as exc:  # the runtime env itself is wrong: no use trying again
                    raise ResourceError(f"The Ray job could not be prepared: {exc}", cluster.FIX) from exc
                except Exception as exc:  # a head that has just started: no job agent yet, a dropped connection
                    if "already exists" in str(exc):  # an earlier try got through before its answer was lost
                        break
                    if time.monotonic() < deadline:
                        time.sleep(2)
                        continue
                    raise ResourceError(f"The Ray cluster at {address} refused the job: {exc}",
                                        cluster.FIX) from exc
        with folder.log.open("ab") as log:
            log.write(f"\n=== attempt {attempt.number} started {now()} as Ray job {job_id} at {address} ===\n"
                      .encode())
            offset = log.tell()  # from here on, train.log is this job's log
        _save_remote(attempt, {"address": address, "job_id": job_id, "log_offset": offset, "notices": []})
        return Handle(ref=job_id)

    def _stage(self, run: Path, manifest: dict[str, Any], tmp: Path) -> Path:
        """tmp/<run id>/ (the run's inputs), tmp/dataset/, tmp/model/ (a local base model folder)."""
        stage = tmp / run.name
        stage.mkdir()
        for name in ("config.yaml", "manifest.json", "events.jsonl"):
            if (run / name).exists():
                shutil.copy2(run / name, stage / name)
        for child in run.iterdir():  # a continued run's start adapter (start-adapter/)
            if child.is_dir() and child.name not in ("adapter", "checkpoints") and not child.name.startswith("."):
                shutil.copytree(child, stage / child.name)
        from studio.training.folder import RunFolder

        last = RunFolder(run).last_checkpoint()
        if last is not None:  # resume continues where the last attempt stopped
            shutil.copytree(last, stage / "checkpoints" / last.name)
        shutil.copytree(manifest["dataset"]["path"], tmp / "dataset")
        base = manifest["base_model"]
        if base.get("local") and Path(base["source"]).is_dir():
            shutil.copytree(base["source"], tmp / "model", ignore=shutil.ignore_patterns(".cache", "*.lock"))
        size = _size(tmp)
        if size > MAX_PACKAGE:
            raise ResourceError(
                f"The run's files come to {size / 1024**2:.0f} MB, more than a Ray job can carry "
                f"({MAX_PACKAGE / 1024**2:.0f} MB).",
                "Train a hub model (each node downloads it) rather than a local folder, or use a smaller "
                "dataset version; see docs/scale.md.")
        return stage

    # ------------------------------------------------------------------------------------ follow

    def poll(self, attempt: Attempt) -> bool:
        """Still running there? Brings the run folder up to date from the job's log. While the cluster
        cannot be reached the run is taken as running, with a notice; it re-attaches when it answers."""
        record = _remote(attempt)
        if record.get("abandoned"):
            return False
        job_id = attempt.handle.ref or record.get("job_id")
        try:
            jobs = cluster.client(record["address"])
            info = jobs.get_job_info(job_id)
            text = jobs.get_job_logs(job_id)
        except Exception as exc:  # the cluster is gone, or its dashboard restarted without the job
            self._lost(attempt, record, exc)
            return True
        if record.get("lost_since"):
            self._note(record, f"Re-attached to Ray job {job_id} at {record['address']} after the connection "
                               f"was lost at {record['lost_since']}.")
            record["lost_since"] = None
        state = str(getattr(info.status, "value", info.status))
        ended = state in TERMINAL
        if ended:
            record["final"] = {"status": state, "message": info.message, "code": info.driver_exit_code}
        _save_remote(attempt, record)
        self._sync(attempt, record, text, ended)
        return not ended

    def _lost(self, attempt: Attempt, record: dict[str, Any], exc: Exception) -> None:
        if not record.get("lost_since"):
            record["lost_since"] = now()
            self._note(record, f"Lost the connection to the Ray cluster at {record['address']} ({exc}). The job "
                               "may still be running there; the studio keeps trying and re-attaches when the "
                               "cluster answers again.")
            _save_remote(attempt, record)
            self._write_events(attempt, self._remote_events(attempt), record)

    @staticmethod
    def _note(record: dict[str, Any], message: str) -> None:
        record.setdefault("notices", []).append({"type": "notice", "time": round(time.time(), 3),
                                                 "message": message, "source": "ray"})

    def _remote_events(self, attempt: Attempt) -> list[dict[str, Any]]:
        return [e for e in attempt.folder.read_events() if e.get("source") != "ray"]

    def _write_events(self, attempt: Attempt, events: list[dict[str, Any]], record: dict[str, Any]) -> None:
        merged = sorted(events + record.get("notices", []), key=lambda e: e.get("time") or 0)
        text = "".join(json.dumps(e, default=str) + "\n" for e in merged)
        path = attempt.folder.events
        if not path.exists() or path.read_text(encoding="utf-8", errors="replace") != text:
            tmp = path.with_name(".events.jsonl.new")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)

    def _sync(self, attempt: Attempt, record: dict[str, Any], text: str, ended: bool) -> None:
        """events.jsonl, status.json and this attempt's part of train.log from the job's log; at the end,
        the bundle (adapter, manifest, status, checkpoint)."""
        folder = attempt.folder
        events, status, chunks, end, plain = [], None, {}, None, []
        for line in text.split("\n"):
            if not line.startswith(MARK + " "):
                plain.append(line)
                continue
            if plain and not plain[-1]:  # the relay's own line break before a record
                plain.pop()
            kind, _, payload = line[len(MARK) + 1:].partition(" ")
            try:
                if kind == "event":
                    events.append(json.loads(payload))
                elif kind == "status":
                    status = json.loads(payload)
                elif kind == "bundle":
                    number, count, data = payload.split(" ", 2)
                    chunks[int(number)] = (int(count), data)
                elif kind == "end":
                    end = json.loads(payload)
            except ValueError:  # a line cut by a kill: what it carried is lost, the rest stands
                continue
        # before the relay starts (the node is still setting up) the log has no events: keep what is here
        self._write_events(attempt, events or self._remote_events(attempt), record)
        if status is not None and not (status.get("state") in ("succeeded", "failed", "cancelled") and end is None):
            write_json_atomic(folder.status, status)  # a final state only with its adapter (the bundle)
        final = record.get("final") or {}
        if ended and final.get("status") == "FAILED" and final.get("message"):
            plain.append(f"Ray: job {record['job_id']} {final['status']}: {final['message'].splitlines()[0]}")
        with folder.log.open("r+b") as log:
            log.seek(record.get("log_offset", 0))
            log.write("\n".join(plain).encode("utf-8", errors="replace"))
            log.truncate()
        if end is not None and record.get("applied") != end["sha256"]:
            self._apply(attempt, record, chunks, end)

    def _apply(self, attempt: Attempt, record: dict[str, Any], chunks: dict, end: dict[str, Any]) -> None:
        count = next(iter(chunks.values()))[0] if chunks else 0
        data = b"".join(base64.b64decode(chunks[i][1]) for i in range(count) if i in chunks)
        if len(chunks) != count or hashlib.sha256(data).hexdigest() != end["sha256"]:
            self._note(record, "The adapter did not come back whole from the Ray job (its log was cut).")
            _save_remote(attempt, record)
            return
        folder = attempt.folder
        unpacked = folder.path / ".ray-bundle"
        shutil.rmtree(unpacked, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(unpacked, filter="data")
        if (unpacked / "adapter").is_dir():  # swapped in whole, as the training process does
            old = folder.path / ".adapter-old"
            shutil.rmtree(old, ignore_errors=True)
            if folder.adapter.exists():
                folder.adapter.rename(old)
            (unpacked / "adapter").rename(folder.adapter)
            shutil.rmtree(old, ignore_errors=True)
        for checkpoint in (unpacked / "checkpoints").glob("checkpoint-*"):
            target = folder.checkpoints / checkpoint.name
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(exist_ok=True)
            checkpoint.rename(target)
        if (unpacked / "manifest.json").exists():  # the node's facts (hardware, libraries), with our paths
            mine = folder.read_manifest()
            theirs = read_json(unpacked / "manifest.json")
            theirs["dataset"]["path"] = mine["dataset"]["path"]
            theirs["base_model"]["source"] = mine["base_model"]["source"]
            theirs["launch"] = {**mine.get("launch", {}), "job_id": record["job_id"]}
            write_json_atomic(folder.manifest, theirs)
        write_json_atomic(folder.exit, {"code": end.get("code"), "ray_job": record["job_id"]})
        if (unpacked / "status.json").exists():
            write_json_atomic(folder.status, read_json(unpacked / "status.json"))
        shutil.rmtree(unpacked, ignore_errors=True)
        record["applied"] = end["sha256"]
        _save_remote(attempt, record)

    # ------------------------------------------------------------------------------------ stop

    def cancel(self, attempt: Attempt) -> bool:
        """stop_job: Ray sends SIGTERM; the run stops at the next step, saves, and its adapter comes back."""
        record = _remote(attempt)
        try:
            return bool(cluster.client(record["address"]).stop_job(attempt.handle.ref or record["job_id"]))
        except Exception:  # unreachable now: the scheduler's kill after the grace period decides
            return False

    def kill(self, attempt: Attempt, grace: float) -> None:
        """Ray kills the job itself STOP_WAIT_S after the stop; a cluster that cannot be reached any more
        is given up on (the job may run on there: the notice says so)."""
        record = _remote(attempt)
        try:
            cluster.client(record["address"]).stop_job(attempt.handle.ref or record["job_id"])
        except Exception as exc:
            self._note(record, f"Gave up on Ray job {record.get('job_id')}: the cluster at {record.get('address')} "
                               f"could not be reached to stop it ({exc}). Stop it there if it still runs: "
                               f"ray job stop --address {record.get('address')} {record.get('job_id')}")
            record["abandoned"] = True
            _save_remote(attempt, record)
            self._write_events(attempt, self._remote_events(attempt), record)

    def failure(self, attempt: Attempt) -> str | None:
        """Ray's reason when the job failed before the run could say why (the node could not set up the
        job's environment, or the studio is not installed there)."""
        final = _remote(attempt).get("final") or {}
        if final.get("status") != "FAILED" or attempt.folder.read_status().get("state") in TERMINAL_STATES:
            return None
        first = (final.get("message") or "no reason given").splitlines()[0]
        return (f"The Ray job {_remote(attempt).get('job_id')} failed before training could report: {first} "
                "(the job's log is in train.log).")

    def ending(self, attempt: Attempt) -> Ending:
        record = _remote(attempt)
        final = record.get("final") or {}
        code = read_json(attempt.folder.exit).get("code") if attempt.folder.exit.exists() else None
        code = code if code is not None else final.get("code")
        if code is not None:
            return Ending(code=code)
        if final.get("status") == "STOPPED" or record.get("abandoned"):
            return Ending(signal=signal.SIGTERM)
        return Ending()
