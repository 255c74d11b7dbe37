"""Guarded status changes (studio/core/states.py) for every entity: each allowed transition, a refused one,
and races in which two writers try conflicting changes at once — exactly one wins, the other is told."""

import json
import secrets
import subprocess
import sys
import threading

import psutil
import pytest
from conftest import save_qa_dataset

from studio.core.db import now
from studio.core.errors import Conflict, NotFound
from studio.publishing import deployments, export
from studio.publishing.deployments import DEPLOYMENT_STATES
from studio.publishing.export import EXPORT_STATES
from studio.serving import launch
from studio.serving.endpoints import ENDPOINT_STATES, Endpoint, new_id
from studio.training import runs, scheduler, submit
from studio.training.presets import build_config
from studio.training.runs import RUN_STATES

MACHINES = {"runs": RUN_STATES, "endpoints": ENDPOINT_STATES, "exports": EXPORT_STATES,
            "deployments": DEPLOYMENT_STATES}


@pytest.fixture
def run_id(ws):
    version = save_qa_dataset(ws)
    return submit.submit(ws, build_config("demo-tiny", version.id, "quick-test"), preset="quick-test").id


def _row(ws, table, status, run_id):
    """A row of `table` in `status`, as the studio would have written it."""
    if table == "runs":
        with ws.db() as db:
            db.execute("UPDATE runs SET status = ? WHERE id = ?", [status, run_id])
        return run_id
    row_id = f"{table}-{status}-{secrets.token_hex(3)}"
    values = {"id": row_id, "status": status, "run_id": run_id, "created_at": "2026-01-01T00:00:00+00:00"}
    if table == "exports":
        values.update(kind="merged", path="/nowhere")
    if table == "deployments":
        values.update(target="local", slot="local:x")
    if table == "endpoints":
        values.update(name=row_id, kind="local", url="http://127.0.0.1:1")
    with ws.db() as db:
        db[table].insert(values)
    return row_id


def _pairs():
    for table, machine in MACHINES.items():
        for source, targets in machine.transitions.items():
            for target in targets:
                yield table, source, target


@pytest.mark.parametrize(("table", "source", "target"), list(_pairs()))
def test_every_allowed_transition(ws, run_id, table, source, target):
    row_id = _row(ws, table, source, run_id)
    MACHINES[table].move(ws, row_id, target)
    assert MACHINES[table].current(ws, row_id) == target


@pytest.mark.parametrize("table", list(MACHINES))
def test_a_refused_transition_says_where_the_row_is_and_changes_nothing(ws, run_id, table):
    machine = MACHINES[table]
    final = next(s for s, targets in machine.transitions.items() if not targets)
    row_id = _row(ws, table, final, run_id)
    target = next(s for s in sorted(machine.states) if s != final and machine.sources(s))
    with pytest.raises(Conflict, match=f"is {final}, so it cannot become {target}"):
        machine.move(ws, row_id, target)
    assert machine.current(ws, row_id) == final
    assert machine.try_move(ws, row_id, target) is False
    with pytest.raises(NotFound):
        machine.move(ws, "no-such-row", target)


def test_a_transition_the_machine_does_not_know_is_a_programming_error(ws, run_id):
    with pytest.raises(ValueError, match="nothing may become 'queued' from"):
        RUN_STATES.move(ws, run_id, "queued", expect=("running",))
    with pytest.raises(ValueError, match="a status changes through move"):
        RUN_STATES.update_while(ws, run_id, ("queued",), status="running")


def _race(*actions):
    """Run the actions at the same moment in threads; return what each returned or raised."""
    barrier = threading.Barrier(len(actions))
    results: list = [None] * len(actions)

    def go(i, action):
        barrier.wait()
        try:
            results[i] = action()
        except Exception as exc:  # the loser's error is part of the result
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i, a)) for i, a in enumerate(actions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_conflicting_transitions_at_once_exactly_one_wins(ws, run_id):
    for _ in range(10):
        row_id = _row(ws, "deployments", "publishing", run_id)
        won = _race(lambda r=row_id: DEPLOYMENT_STATES.move(ws, r, "healthy"),
                    lambda r=row_id: DEPLOYMENT_STATES.move(ws, r, "failed"))
        errors = [r for r in won if isinstance(r, Exception)]
        assert len(errors) == 1 and isinstance(errors[0], Conflict)
        final = DEPLOYMENT_STATES.current(ws, row_id)
        assert f"is {final}, so it cannot become" in errors[0].message


def test_two_processes_race_for_the_same_run_and_one_wins(ws, run_id):
    """Not threads this time: two interpreters, each its own SQLite connection, both try queued → other."""
    code = ("import sys; from studio.core.workspace import Workspace; from studio.training import runs\n"
            "ws = Workspace.open(sys.argv[1])\n"
            "print(runs.transition(ws, sys.argv[2], sys.argv[3], expect=('queued',), quiet=True))")
    races = [subprocess.Popen([sys.executable, "-c", code, str(ws.home), run_id, to], stdout=subprocess.PIPE,
                              text=True) for to in ("running", "cancelled")]
    outcomes = [p.communicate(timeout=60)[0].strip() for p in races]
    assert sorted(outcomes) == ["False", "True"]
    assert runs.get_run(ws, run_id).status == ("running", "cancelled")[outcomes.index("True")]


def test_cancel_against_the_schedulers_claim_of_the_same_run(ws):
    """Whichever comes first, the run never runs without a pending cancel, and never is cancelled and
    running at once: cancel of a just-claimed run becomes a cancel request its launch passes on."""
    version = save_qa_dataset(ws)
    cfg = build_config("demo-tiny", version.id, "quick-test")
    seen = set()
    for _ in range(12):
        run = submit.submit(ws, cfg, preset="quick-test", force=True, estimate={})
        claimed, cancelled = _race(lambda: scheduler.claim_next(ws, scheduler.CPU_SLOT),
                                   lambda r=run.id: scheduler.cancel(ws, r))
        assert not isinstance(claimed, Exception) and not isinstance(cancelled, Exception)
        after = runs.get_run(ws, run.id)
        if claimed is None:
            assert after.status == "cancelled" and after.pid is None
            seen.add("cancel first")
        else:
            assert after.status == "running" and after.cancel_requested_at is not None
            seen.add("claim first")
            runs.transition(ws, run.id, "cancelled", expect=("running",))  # as reconcile would, once it stopped
    assert seen  # at least one ordering happened; both are checked whenever they occur


def test_two_claims_of_the_same_endpoint_start_one(ws, run_id):
    """Two starts for the same port or name at once: one is registered, the other refused, nothing half-done."""
    def claim(name, port):
        endpoint = Endpoint(id=new_id(), name=name, kind="local", url=f"http://127.0.0.1:{port}", port=port,
                            created_at=now(), run_id=run_id, adapters={run_id: run_id})
        launch._claim(ws, endpoint, for_run=None, named=True)
        return endpoint.id

    for clash in ({"a": ("same", 20001), "b": ("same", 20002)}, {"a": ("one", 20003), "b": ("two", 20003)}):
        won = _race(lambda c=clash: claim(*c["a"]), lambda c=clash: claim(*c["b"]))
        errors = [r for r in won if isinstance(r, Exception)]
        assert len(errors) == 1 and isinstance(errors[0], Conflict), won
        winner = next(r for r in won if isinstance(r, str))
        with ws.db() as db:
            live = [r["id"] for r in db["endpoints"].rows_where("status = 'starting'")]
        assert winner in live and len([r for r in won if isinstance(r, str)]) == 1
        ENDPOINT_STATES.move(ws, winner, "stopped")


def test_a_publish_whose_process_died_is_failed_not_left_publishing(ws, run_id):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_start = psutil.Process(dead.pid).create_time()
    dead.wait()
    alive_owner = deployments.create(ws, run_id=run_id, target="local", slot="local:a")  # this process owns it
    orphan = deployments.create(ws, run_id=run_id, target="local", slot="local:b")
    with ws.db() as db:
        db["deployments"].update(orphan.id, {"owner_pid": dead.pid, "owner_start": dead_start})
    [listed_orphan] = [d for d in deployments.list_deployments(ws) if d.id == orphan.id]  # listing reconciles
    assert listed_orphan.status == "failed" and "stopped before it finished" in listed_orphan.error
    assert deployments.get_deployment(ws, alive_owner.id).status == "publishing"
    assert deployments.reconcile(ws) == []


def test_an_export_whose_process_died_is_failed_with_how_it_ended(ws, run_id, tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print('merging'); sys.exit(9)"],
                            stdout=(folder / "export.log").open("w"))
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    (folder / "exit.json").write_text(json.dumps({"code": 9, "signal": None}))
    with ws.db() as db:
        db["exports"].insert({"id": "exp-dead", "run_id": run_id, "kind": "merged", "status": "running",
                              "path": str(folder), "created_at": "2026-01-01T00:00:00+00:00", "pid": proc.pid,
                              "proc_start": started})
        db["exports"].insert({"id": "exp-unlaunched", "run_id": run_id, "kind": "merged", "status": "running",
                              "path": str(folder), "created_at": "2020-01-01T00:00:00+00:00"})
    assert sorted(export.reconcile(ws)) == ["exp-dead", "exp-unlaunched"]
    dead = export.get_export(ws, "exp-dead")
    assert dead.status == "failed" and "exited with code 9" in dead.error and "merging" in dead.error
    assert "while it was starting" in export.get_export(ws, "exp-unlaunched").error


def test_a_decision_taken_on_a_stale_snapshot_changes_nothing(ws, run_id):
    """'No process yet, so its starter died' must not fail an endpoint whose process was recorded meanwhile."""
    row_id = _row(ws, "endpoints", "starting", run_id)
    stale = launch.read(ws, row_id)
    ENDPOINT_STATES.update_while(ws, row_id, ("starting",), pid=4242)  # its starter launched it meanwhile
    assert not ENDPOINT_STATES.try_move(ws, row_id, "failed", unchanged={"pid": stale.pid})
    assert ENDPOINT_STATES.current(ws, row_id) == "starting"
    assert ENDPOINT_STATES.try_move(ws, row_id, "failed", unchanged={"pid": 4242})
