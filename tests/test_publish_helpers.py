"""Shared by the publish tests: a LoRA adapter on demo-tiny with random (non-zero) weights, built once,
and registering a finished run around an adapter folder in a workspace.

Import the names you need: `from test_publish_helpers import lora_adapter, register_run`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

QA = [("What are your opening hours?", "We are open 9 to 5."), ("Do you ship abroad?", "Yes, to the EU."),
      ("How do I reset my password?", "Click 'Forgot password'."), ("Can I pay by card?", "Yes, all cards."),
      ("Where is my order?", "See the tracking link.")]


@pytest.fixture(scope="session")
def lora_adapter(demo_model_source, tmp_path_factory) -> Path:
    """A run-like adapter folder: peft adapter (r=4, random so it changes the replies), tokenizer with
    the chat template, generation_config.json. Built once per test session."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("lora") / "adapter"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(demo_model_source)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(demo_model_source).save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return out


def register_run(ws, adapter_dir: Path, run_id: str = "run-20260101-000000-test", *, status: str = "succeeded",
                 dataset_id: str | None = None, max_length: int = 256) -> str:
    """A run row + run folder (config.yaml, adapter/) around a copy of `adapter_dir`, with a small data
    version (created unless `dataset_id` names one)."""
    import datasets
    import yaml

    from studio.data.store import save_version
    from studio.db import now

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
