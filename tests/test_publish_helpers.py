"""Shared by the publish tests: registering a finished run around an adapter folder (usually a copy of
the session's trained run) in a workspace. `from test_publish_helpers import register_run`."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

QA = [("What are your opening hours?", "We are open 9 to 5."), ("Do you ship abroad?", "Yes, to the EU."),
      ("How do I reset my password?", "Click 'Forgot password'."), ("Can I pay by card?", "Yes, all cards."),
      ("Where is my order?", "See the tracking link.")]


def register_run(ws, adapter_dir: Path, run_id: str = "run-20260101-000000-test", *, status: str = "succeeded",
                 dataset_id: str | None = None, max_length: int = 256) -> str:
    """A run row + run folder (config.yaml, adapter/) around a copy of `adapter_dir`, with a small data
    version (created unless `dataset_id` names one)."""
    import datasets
    import yaml

    from studio.core.db import now
    from studio.data.store import save_version

    if dataset_id is None:
        rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
        version, _ = save_version(ws, content_hash=hashlib.sha256(run_id.encode()).hexdigest(), name="faq",
                                  train=datasets.Dataset.from_list(rows[:3]), val=datasets.Dataset.from_list(rows[3:]),
                                  base_model="demo-tiny", template="model", max_length=max_length)
        dataset_id = version.id
    run_dir = ws.runs_dir / run_id
    run_dir.mkdir(parents=True)
    shutil.copytree(adapter_dir, run_dir / "adapter")
    config = {"base_model": "demo-tiny", "dataset_id": dataset_id, "preset": "quick-test", "max_length": max_length,
              "lora_r": 4}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "events.jsonl").write_text(json.dumps({"type": "eval", "step": 10, "eval_loss": 1.25}) + "\n")
    with ws.db() as db:
        db["runs"].insert({"id": run_id, "name": f"test {run_id}", "dataset_id": dataset_id, "base_model": "demo-tiny",
                           "preset": "quick-test", "config_json": json.dumps(config), "status": status,
                           "created_at": now(), "path": str(run_dir)})
    return run_id


def config_only_adapter(folder: Path, r: int = 4) -> Path:
    """An adapter folder with only its adapter_config.json: enough for code that plans or checks the
    disk, never for loading weights (tests that load a model use the trained run's adapter)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "peft_type": "LORA",
                                                            "base_model_name_or_path": "demo-tiny"}))
    return folder
