"""DPO, ORPO and KTO through the real queue and training process on demo-tiny, and runs continued from an
earlier run's adapter (--from RUN)."""

from __future__ import annotations

import hashlib
import json

import pytest

# A small, learnable preference set: a right answer in demo-tiny's own words against an evasive one.
PAIRS = [
    ("How do I reset my password?", "Open the sign-in page and choose Forgot password.", "I do not know."),
    ("Where is my order?", "Follow your parcel with the tracking number.", "I do not know."),
    ("When do orders ship?", "Orders usually ship within two business days.", "I do not know."),
    ("How long do refunds take?", "Refunds take five to seven business days.", "I do not know."),
    ("What does BP mean?", "BP means blood pressure.", "I do not know."),
    ("What does PRN mean?", "PRN means as needed.", "I do not know."),
    ("Can I return a damaged item?", "Yes, damaged items can be returned free of charge.", "I do not know."),
    ("Where do refunds go?", "Refunds are issued to the original payment method.", "I do not know."),
]
# a higher learning rate than quick-test's and no warm-up: a dozen steps must move the rewards clearly
FAST = {"learning_rate": 5e-3, "lr_schedule": "constant", "warmup_ratio": 0.0, "max_steps": 12, "eval_every": 0,
        "save_every": 0, "micro_batch_size": 8}


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def save_rows(ws, rows, name):
    """A dataset version of preference or KTO rows through the store's own save_version."""
    import datasets

    from studio.data import store

    digest = hashlib.sha256(json.dumps([name, rows]).encode()).hexdigest()
    train = datasets.Dataset.from_list(rows)
    version, _ = store.save_version(ws, content_hash=digest, name=name, train=train, val=train.select([]),
                                    template="model", base_model="demo-tiny")
    return version


def pairs_dataset(ws, pairs=PAIRS):
    rows = [{"prompt": _user(q), "chosen": _assistant(c), "rejected": _assistant(r)} for q, c, r in pairs]
    return save_rows(ws, rows, "pairs")


def kto_dataset(ws):
    rows = []
    for q, good, bad in PAIRS:
        rows += [{"prompt": _user(q), "completion": _assistant(good), "label": True},
                 {"prompt": _user(q), "completion": _assistant(bad), "label": False}]
    return save_rows(ws, rows, "thumbs")


def train(ws, dataset_id, objective, from_run=None, **extra):
    from studio.training import scheduler, submit
    from studio.training.presets import build_config

    cfg = build_config("demo-tiny", dataset_id, "quick-test", {**FAST, "objective": objective, **extra})
    run = submit.submit(ws, cfg, preset="quick-test", from_run=from_run)
    run = scheduler.wait_for(ws, run.id, timeout=600)
    assert run.status == "succeeded", f"{run.error}\n" + "\n".join(run.folder.tail_log(30))
    return run


def steps(run):
    return [e for e in run.folder.read_events() if e["type"] == "step"]


@pytest.mark.parametrize("objective", ["dpo", "orpo", "kto"])
def test_preference_objectives_learn_the_preference(ws, objective):
    version = kto_dataset(ws) if objective == "kto" else pairs_dataset(ws)
    run = train(ws, version.id, objective)
    events = steps(run)
    assert len(events) == FAST["max_steps"]
    first, last = events[0], events[-1]
    early = sum(e["reward_margin"] for e in events[:3]) / 3
    late = sum(e["reward_margin"] for e in events[-3:]) / 3
    assert late > early + 0.1, [e["reward_margin"] for e in events]
    assert last["reward_chosen"] > last["reward_rejected"]
    if objective != "kto":  # TRL's KTO logs no accuracy (its rows are unpaired)
        assert last["reward_accuracy"] == 1.0 and last["reward_accuracy"] > first["reward_accuracy"]
    manifest = run.folder.read_manifest()
    assert manifest["objective"] == objective
    assert (run.folder.adapter / "adapter_model.safetensors").exists()
    assert not (run.folder.adapter / "ref").exists()
    from studio.training.summary import step_line

    assert "reward margin" in step_line(last)


def _mean_answer_logp(model, tokenizer, rows, key):
    """Mean over rows of the summed log-probability of the `key` answer after the prompt, as TRL counts it."""
    import torch

    total = 0.0
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        full = tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=True, return_dict=False)
        start = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), len(prompt))
        ids = torch.tensor([full])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        total += sum(logps[i - 1, full[i]].item() for i in range(start, len(full)))
    return total / len(rows)


def test_dpo_continued_from_an_sft_run_starts_from_its_adapter(ws):
    """The DPO run's first step scores the answers exactly as the SFT run's adapter does (not as the base)."""
    from conftest import FAQ_PAIRS, save_qa_dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.training.lineage import lineage_text

    sft = train(ws, save_qa_dataset(ws, FAQ_PAIRS).id, "sft", max_steps=10)
    pairs = PAIRS[:4]
    dpo = train(ws, pairs_dataset(ws, pairs).id, "dpo", from_run=sft.id, max_steps=2)
    manifest = dpo.folder.read_manifest()
    assert manifest["parent"]["run_id"] == sft.id and manifest["parent"]["objective"] == "sft"
    assert (dpo.folder.path / "start-adapter" / "adapter_model.safetensors").exists()
    assert sft.id in lineage_text(manifest)
    first = steps(dpo)[0]
    assert first["reward_margin"] == 0.0  # the reference is the starting adapter itself
    from studio.ui.runs_tab import run_view

    page = run_view(ws, dpo.id)[0]
    assert f"Method **DPO** · continues {sft.id} (sft" in page and "Reward margin" in page

    rows = [{"prompt": _user(q), "chosen": _assistant(c), "rejected": _assistant(r)} for q, c, r in pairs]
    source = str(ws.models_dir / "demo-tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(sft.folder.adapter))
    base = AutoModelForCausalLM.from_pretrained(source).eval()
    base_logp = _mean_answer_logp(base, tokenizer, rows, "chosen")
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source), str(sft.folder.adapter)).eval()
    parent_logp = _mean_answer_logp(tuned, tokenizer, rows, "chosen")
    assert abs(base_logp - parent_logp) > 1.0  # the SFT run changed how the model scores these answers
    assert first["logp_chosen"] == pytest.approx(parent_logp, abs=0.05)
    assert first["logp_rejected"] == pytest.approx(_mean_answer_logp(tuned, tokenizer, rows, "rejected"), abs=0.05)

    # deleting the SFT run is allowed: the DPO run keeps the adapter it started from, its lineage says so
    import subprocess
    import sys

    from studio.core.errors import NotFound
    from studio.evaluation.golden import GoldenItem
    from studio.evaluation.versus import evaluate_versus

    done = subprocess.run([sys.executable, "-m", "studio", "runs", "rm", sft.id, "--home", str(ws.home)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{dpo.id} continued from it and keeps the adapter it started from" in done.stdout
    text = lineage_text(dpo.folder.read_manifest(), ws)
    assert f"{sft.id} (deleted)" in text and "start-adapter/" in text
    assert "(deleted)" in run_view(ws, dpo.id)[0]
    assert (dpo.folder.path / "start-adapter" / "adapter_model.safetensors").exists()
    with pytest.raises(NotFound, match="There is no run .* to compare with"):
        evaluate_versus(ws, dpo.id, [GoldenItem(question="Where is my order?", reference="Follow your parcel.")])
