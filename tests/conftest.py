"""Shared fixtures: every test gets its own STUDIO_HOME; demo-tiny is built once per test run."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

# Tests talk to endpoints on 127.0.0.1; HF_HUB_OFFLINE=1 would make InferenceClient refuse them.
os.environ.pop("HF_HUB_OFFLINE", None)
# Runs made by tests never log to a developer's own MLflow server (tests/test_tracking.py starts its own).
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason, where there is none (nothing else is)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here); "
                            "run bench/gpu_tests.sh on a GPU machine")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_model_source(tmp_path_factory) -> Path:
    """One build of demo-tiny for the whole test run."""
    from studio.models.demo import build_demo_model

    out = tmp_path_factory.mktemp("demo-tiny-build") / "demo-tiny"
    build_demo_model(out)
    return out


@pytest.fixture(autouse=True)
def studio_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "studio-home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    return home


@pytest.fixture
def ws(studio_home, demo_model_source):
    """A fresh workspace whose demo-tiny is the session's build (linked, not rebuilt)."""
    from studio.core.workspace import Workspace

    workspace = Workspace.open(studio_home)
    (workspace.models_dir / "demo-tiny").symlink_to(demo_model_source, target_is_directory=True)
    return workspace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- training (issue 4): one trained demo-tiny run for the whole test session --------------------

# Short support answers in the words of demo-tiny's corpus: quick-test learns them in about a minute.
FAQ_PAIRS = [
    ("How do I reset my password?", "Open the sign-in page, choose Forgot password and follow the link in your email."),
    ("Where is my order?", "Follow your parcel with the tracking number in your confirmation email."),
    ("When do orders ship?", "Orders usually ship within two business days."),
    ("How long do refunds take?", "Refunds reach the original payment method within five to seven business days."),
    ("Can I return a damaged item?", "Yes, damaged items can be returned free of charge within thirty days."),
    ("How long is the password link valid?", "The link expires after thirty minutes for your security."),
    ("Can I change my delivery address?", "Contact us before the parcel has shipped and we will change the address."),
    ("What if tracking has not changed?", "If it has not changed for five days, contact us and we will investigate."),
    ("Who pays for returning damaged items?", "Damaged items can be returned free of charge."),
    ("Where do refunds go?", "Refunds are issued to the original payment method."),
    ("What does BP mean?", "BP means blood pressure."),
    ("What does PRN mean?", "PRN means as needed."),
]


def save_qa_dataset(ws, pairs=FAQ_PAIRS, name="support faq", val_pairs=3):
    """A dataset version from (question, answer) pairs through the store's own save_version."""
    import hashlib
    import json

    import datasets

    from studio.data import store

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    digest = hashlib.sha256(json.dumps([name, rows]).encode()).hexdigest()
    version, _ = store.save_version(
        ws, content_hash=digest, name=name, train=datasets.Dataset.from_list(rows),
        val=datasets.Dataset.from_list(rows[:val_pairs]), template="model", base_model="demo-tiny",
    )
    return version


@dataclass
class TrainedRun:
    ws: object  # the session's Workspace (its own STUDIO_HOME, not the per-test one)
    run_id: str
    run_dir: Path
    adapter_dir: Path
    dataset_id: str


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_model_source) -> TrainedRun:
    """demo-tiny trained once per test session with the quick-test preset, through the real queue and
    training process; status 'succeeded' in ws's runs table, adapter/ ready for chat, eval, publish."""
    from studio.core.workspace import Workspace
    from studio.training import scheduler, submit
    from studio.training.presets import build_config

    ws = Workspace.open(tmp_path_factory.mktemp("trained-run") / "studio-home")
    (ws.models_dir / "demo-tiny").symlink_to(demo_model_source, target_is_directory=True)
    version = save_qa_dataset(ws)
    run = submit.submit(ws, build_config("demo-tiny", version.id, "quick-test"), preset="quick-test")
    run = scheduler.wait_for(ws, run.id, timeout=600)
    if run.status != "succeeded":
        tail = "\n".join(run.folder.tail_log(30))
        pytest.fail(f"the shared training run ended {run.status}: {run.error}\n{tail}")
    return TrainedRun(ws=ws, run_id=run.id, run_dir=Path(run.path), adapter_dir=Path(run.path) / "adapter",
                      dataset_id=version.id)


# --- comparing runs (issue 19): a second finished run beside the session's trained run ------------------

# the second dataset version: the first two questions gone, one answer rewritten, two questions new
CHANGED_PAIRS = [
    (FAQ_PAIRS[2][0], "Orders ship within one business day."), *FAQ_PAIRS[3:],
    ("Do you ship abroad?", "Yes, we ship to most countries; delivery takes five to ten business days."),
    ("How do I cancel an order?", "Open the order in your account and choose Cancel before it ships."),
]
COMPARED_GOLDEN = [FAQ_PAIRS[0], FAQ_PAIRS[3], FAQ_PAIRS[10]]


@dataclass
class ComparedRuns:
    ws: object  # a workspace of its own (the session's trained workspace is only read)
    first: str  # the session's trained run, adopted
    second: str  # continued from `first` on the changed dataset version, with other settings
    golden_hash: str  # the golden set both runs were evaluated on
    deployment_id: str  # the first run published (remote target: the endpoint below) and verified
    export_id: str


def adopt_trained_run(trained_run, ws) -> str:
    """The session's run and its dataset version copied into `ws` (rows and folders, no checkpoints)."""
    import shutil

    with trained_run.ws.db() as db:
        run = dict(db["runs"].get(trained_run.run_id))
        dataset = dict(db["datasets"].get(trained_run.dataset_id))
    run_dir, data_dir = ws.runs_dir / trained_run.run_id, ws.datasets_dir / trained_run.dataset_id
    shutil.copytree(trained_run.run_dir, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(dataset["path"], data_dir)
    with ws.db() as db:
        db["datasets"].insert({**dataset, "path": str(data_dir)})
        db["runs"].insert({**run, "path": str(run_dir)})
    return trained_run.run_id


@pytest.fixture(scope="session")
def compared_runs(tmp_path_factory, trained_run) -> ComparedRuns:
    """Two finished runs to compare, through the real queue, endpoint, evaluation and publish: the trained run,
    and a 10-step run continued from it on a second dataset version with another learning rate; both evaluated
    on one golden set through one endpoint that serves both adapters; the first published to that endpoint."""
    from studio.core.workspace import Workspace
    from studio.evaluation.golden import GoldenItem, golden_hash
    from studio.evaluation.runner import evaluate_run
    from studio.publishing import pipeline
    from studio.serving import endpoints, launch
    from studio.training import scheduler, submit
    from studio.training.presets import build_config

    ws = Workspace.open(tmp_path_factory.mktemp("compared-runs") / "studio-home")
    (ws.models_dir / "demo-tiny").symlink_to(trained_run.ws.models_dir / "demo-tiny", target_is_directory=True)
    first = adopt_trained_run(trained_run, ws)
    version = save_qa_dataset(ws, CHANGED_PAIRS, name="support faq v2")
    overrides = {"max_steps": 10, "learning_rate": 1e-3, "eval_every": 5, "save_every": 10}
    cfg = build_config("demo-tiny", version.id, "quick-test", overrides)
    second = submit.submit(ws, cfg, preset="quick-test", overrides=overrides, name="faq v2, continued",
                           from_run=first)
    run = scheduler.wait_for(ws, second.id, timeout=600)
    if run.status != "succeeded":
        pytest.fail(f"the second run ended {run.status}: {run.error}\n" + "\n".join(run.folder.tail_log(30)))
    golden = [GoldenItem(question=q, reference=a) for q, a in COMPARED_GOLDEN]
    endpoint = launch.start_endpoint(ws, "demo-tiny", {first: first, second.id: second.id}, name="both runs")
    try:
        for run_id in (first, second.id):
            evaluate_run(ws, run_id, golden, golden_name="faq three", max_new_tokens=12, heldout_rows=2)
        deployment = pipeline.publish(ws, first, "remote", {"url": endpoint.url, "merged": False,
                                                            "model_name": first})
    finally:
        endpoints.stop_endpoint(ws, endpoint.id, reason="test set-up over")
    return ComparedRuns(ws=ws, first=first, second=second.id, golden_hash=golden_hash(golden),
                        deployment_id=deployment.id, export_id=deployment.export_id)
