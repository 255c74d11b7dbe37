"""Export: merged (16-bit or wider, sharded safetensors) and adapter-only folders that plain transformers /
peft reload and that answer exactly like the run's model; the model card; disk checks; unfinished runs."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

import pytest
from test_publish_helpers import config_only_adapter, register_run

from studio.core.errors import Conflict, ResourceError
from studio.publishing.card import render_card
from studio.publishing.export import ExportFailed, list_exports, start_export, wait_export
from studio.publishing.export_worker import folder_hash
from studio.publishing.pipeline import ensure_export
from studio.publishing.source import derive_limits, finished_run

PROMPTS = [[{"role": "user", "content": "Do you ship abroad?"}]]


def greedy(model, tokenizer, messages, n=24) -> list[int]:
    import torch

    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def studio_model(base_source, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_source), adapter_dir).eval()


def shared_export(trained_run, kind):
    """The trained run's export of this kind (made once per session, reused by the publish tests)."""
    return ensure_export(trained_run.ws, finished_run(trained_run.ws, trained_run.run_id), kind)


@pytest.mark.slow
def test_merged_export_reloads_with_plain_transformers_and_answers_like_the_run(trained_run, demo_model_source):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    export = shared_export(trained_run, "merged")
    files = set(os.listdir(export.model_dir))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md"} <= files
    assert not (export.folder / "model.partial").exists()

    merged = AutoModelForCausalLM.from_pretrained(export.model_dir).eval()  # plain transformers, no peft
    tokenizer = AutoTokenizer.from_pretrained(export.model_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    run_tokenizer = AutoTokenizer.from_pretrained(trained_run.adapter_dir)
    assert tokenizer.chat_template == run_tokenizer.chat_template
    reference = studio_model(demo_model_source, trained_run.adapter_dir)
    recorded = export.reference()["prompts"]
    assert 1 <= len(recorded) == export.reference()["prompts_from"]["asked"]  # the run's verification set
    for item in recorded:
        assert greedy(merged, tokenizer, item["messages"]) == greedy(reference, run_tokenizer, item["messages"])
        assert item["tuned"]["finish"] == "eos" and item["tuned"]["text"] != item["base"]["text"]

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = GenerationConfig.from_pretrained(export.model_dir).eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    assert export.dtype == "float32"  # demo-tiny is stored in float32, so the merge kept float32

    card = (export.model_dir / "README.md").read_text()
    for fact in ("base_model: demo-tiny", trained_run.run_id, trained_run.dataset_id, "quick-test", "Intended use",
                 "Limitations", "<|im_end|>"):
        assert fact in card, fact
    digest, sizes = folder_hash(export.model_dir)
    assert export.export_hash == digest == json.loads((export.folder / "manifest.json").read_text())["export_hash"]
    assert export.bytes == sum(sizes.values())
    assert export.version == f"{trained_run.run_id}@{digest[:12]}"


@pytest.mark.slow
def test_adapter_export_reloads_with_peft_and_answers_like_the_run(trained_run, demo_model_source):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = shared_export(trained_run, "adapter")
    files = set(os.listdir(export.model_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "generation_config.json",
            "README.md"} <= files
    assert not any(f.startswith("model") for f in files)  # the adapter alone
    assert export.bytes < 2_000_000
    exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_source),
                                         export.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(export.model_dir)
    reference = studio_model(demo_model_source, trained_run.adapter_dir)
    for item in export.reference()["prompts"]:
        assert greedy(exported, tokenizer, item["messages"]) == greedy(reference, tokenizer, item["messages"])
    assert "library_name: peft" in (export.model_dir / "README.md").read_text()


@pytest.mark.slow
def test_a_bf16_base_is_merged_in_bf16_into_shards(ws, trained_run, demo_model_source, tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(demo_model_source, dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(demo_model_source).save_pretrained(base)
    run_id = register_run(ws, trained_run.adapter_dir)
    with ws.db() as db:
        db["runs"].update(run_id, {"base_model": str(base)})
    source = finished_run(ws, run_id)
    export = start_export(ws, source, "merged", prompts=[], shard_size="1MB")  # only the weights matter here
    export = wait_export(ws, export.id, timeout=180)
    assert export.dtype == "bfloat16"
    shards = sorted(p.name for p in export.model_dir.glob("*.safetensors"))
    assert len(shards) > 1 and (export.model_dir / "model.safetensors.index.json").exists()  # sharded
    dtypes = set()
    for shard in shards:
        with safe_open(str(export.model_dir / shard), "pt") as f:
            dtypes |= {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    assert json.loads((export.model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    merged = AutoModelForCausalLM.from_pretrained(export.model_dir)  # the shards load back
    assert merged.dtype == torch.bfloat16


def test_export_refuses_when_the_disk_is_too_small(ws, tmp_path, monkeypatch):
    import shutil as real_shutil

    from studio.publishing import export as export_module

    run_id = register_run(ws, config_only_adapter(tmp_path / "adapter"))
    usage = real_shutil.disk_usage(ws.home)
    monkeypatch.setattr(export_module.shutil, "disk_usage", lambda path: usage._replace(free=1_000_000))
    with pytest.raises(ResourceError) as info:
        start_export(ws, finished_run(ws, run_id), "merged", prompts=PROMPTS)
    assert "Not enough disk space for the merged model" in info.value.message
    assert "adapter alone" in info.value.fix
    assert list_exports(ws) == [] and list(ws.exports_dir.iterdir()) == []  # nothing started, nothing written


@pytest.mark.slow
def test_disk_full_during_the_export_fails_cleanly(ws, trained_run):
    """The export process may write files of at most 1 MB (RLIMIT_FSIZE, inherited): writing the weights
    fails with EFBIG as on a full disk, and the export says so."""
    run_id = register_run(ws, trained_run.adapter_dir)
    source = finished_run(ws, run_id)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit returns EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, hard))
    try:
        export = start_export(ws, source, "merged", prompts=[])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    with pytest.raises(ExportFailed) as info:
        wait_export(ws, export.id, timeout=120)
    assert "disk filled up" in str(info.value) and "adapter alone" in str(info.value)
    failed = list_exports(ws)[0]
    assert failed.status == "failed" and "disk filled up" in failed.error
    assert not (failed.folder / "model").exists() and not (failed.folder / "model.partial").exists()


def test_a_run_that_has_not_finished_is_refused(ws):
    from studio.core.db import now

    run_id = "run-20260101-000000-busy"
    with ws.db() as db:
        db["runs"].insert({"id": run_id, "status": "running", "created_at": now(), "path": str(ws.runs_dir / run_id),
                           "base_model": "demo-tiny"})
    with pytest.raises(Conflict) as info:
        finished_run(ws, run_id)
    assert "is running, not finished" in info.value.message
    out = subprocess.run([sys.executable, "-m", "studio", "publish", run_id, "--home", str(ws.home)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: Run '{run_id}' is running, not finished")
    assert list_exports(ws) == []


def test_token_limits_come_from_the_data():
    split = derive_limits(100, 40, 150, max_length=512, context=4096)
    assert (split.max_input_tokens, split.max_total_tokens) == (192, 192 + 128)
    answers_and_rows = derive_limits(None, 40, 150, max_length=512, context=4096)  # what the data report has
    assert (answers_and_rows.max_input_tokens, answers_and_rows.max_total_tokens) == (256, 256 + 128)
    rows_only = derive_limits(None, None, 300, max_length=512, context=4096)
    assert (rows_only.max_input_tokens, rows_only.max_total_tokens) == (512, 512 + 320)
    assert "longest conversation (300 tokens)" in rows_only.basis
    nothing = derive_limits(None, None, None, max_length=1024, context=None)
    assert (nothing.max_input_tokens, nothing.max_total_tokens) == (768, 1024)
    capped = derive_limits(None, None, 900, max_length=512, context=1024)
    assert capped.max_total_tokens == 1024 and capped.max_input_tokens == 768 and "capped" in capped.basis


def test_model_card_names_base_data_preset_metrics_use_and_limits():
    card = render_card({"run_id": "run-x", "kind": "merged", "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
                        "dataset": {"id": "ds-abc", "name": "faq", "rows_train": 40, "rows_val": 5},
                        "preset": "balanced", "lora_r": 16, "max_length": 1024, "metrics": {"eval_loss": 0.5},
                        "license": "Apache-2.0", "dtype": "bfloat16", "eos_tokens": ["<|im_end|>"]})
    front = card.split("---")[1]
    assert "base_model: Qwen/Qwen2.5-0.5B-Instruct" in front and "license: apache-2.0" in front
    for fact in ("`ds-abc` faq — 40 training rows, 5 validation rows", "| Preset | balanced |",
                 "| LoRA rank | 16 |", "0.5000", "## Intended use", "## Limitations", "bfloat16", "never into 4-bit"):
        assert fact in card, fact


def test_end_of_turn_token_joins_the_eos_ids(demo_model_source):
    from transformers import AutoTokenizer, GenerationConfig

    from studio.publishing.export_worker import end_of_turn_ids, eos_ids

    tokenizer = AutoTokenizer.from_pretrained(demo_model_source)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(tokenizer) == [im_end]
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert eos_ids(tokenizer, GenerationConfig(eos_token_id=pad)) == [pad, im_end]  # a base config that forgot it
