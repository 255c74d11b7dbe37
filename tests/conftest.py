"""Shared fixtures: every test gets its own STUDIO_HOME; demo-tiny is built once per test run."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

# Tests talk to endpoints on 127.0.0.1; HF_HUB_OFFLINE=1 would make InferenceClient refuse them.
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def demo_model_source(tmp_path_factory) -> Path:
    """One build of demo-tiny for the whole test run."""
    from studio.demo_model import build_demo_model

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
    from studio.workspace import Workspace

    workspace = Workspace.open(studio_home)
    (workspace.models_dir / "demo-tiny").symlink_to(demo_model_source, target_is_directory=True)
    return workspace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
