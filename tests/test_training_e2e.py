"""A real run of demo-tiny with quick-test (the shared `trained_run`): loss falls, the adapter changes the
model's answers towards the trained ones, and the run folder holds everything the contract promises."""

import difflib
import json
import re

import pytest
import yaml
from conftest import FAQ_PAIRS
from device import CUDA, expected_method

from studio.training import runs, summary
from studio.training.folder import RunFolder
from studio.training.presets import load_preset

STEPS = load_preset("quick-test").overrides["max_steps"]  # the trained_run fixture uses quick-test

pytestmark = pytest.mark.slow


def test_the_run_succeeded_and_its_loss_fell(trained_run):
    run = runs.get_run(trained_run.ws, trained_run.run_id)
    assert run.status == "succeeded" and run.step == run.max_steps == STEPS
    curves = summary.summarize(RunFolder(trained_run.run_dir))
    losses = [e["loss"] for e in curves["steps"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.5, f"loss should fall clearly: {first:.2f} -> {last:.2f}"
    evals = [e["eval_loss"] for e in curves["evals"]]
    assert len(evals) == STEPS // 20 and evals[-1] < evals[0]
    assert run.loss == pytest.approx(losses[-1]) and run.eval_loss == pytest.approx(evals[-1])
    # the Runs tab reads the curves in words, as `studio runs show` does
    from studio.ui.runs_tab import run_view

    assert summary.learning_verdict(curves) in run_view(trained_run.ws, trained_run.run_id)[0]


def test_events_carry_every_progress_field(trained_run):
    events = RunFolder(trained_run.run_dir).read_events()
    kinds = [e["type"] for e in events]
    assert "start" in kinds and kinds[-1] == "end"
    # without CUDA the 32-bit notice comes first; with CUDA the run trains as asked and says nothing of it
    notices = [e["message"] for e in events if e["type"] == "notice"]
    assert (kinds[0] == "notice" and any("32-bit" in n for n in notices)) is (not CUDA)
    step = next(e for e in events if e["type"] == "step" and e["step"] == 10)
    for key in ("step", "max_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second",
                "tokens_seen", "gpu_memory", "elapsed", "eta"):
        assert key in step, key
    assert step["tokens_per_second"] > 0 and step["eta"] > 0
    assert step["gpu_memory"] > 0 if CUDA else step["gpu_memory"] is None  # peak allocated by torch, on CUDA
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == list(range(20, STEPS + 1, 20))
    end = events[-1]
    assert end["status"] == "succeeded" and end["step"] == STEPS and end["adapter"].endswith("adapter")


def test_train_log_reads_as_lines_not_dicts_or_bars(trained_run):
    log = RunFolder(trained_run.run_dir).log.read_text()
    assert f"step 10/{STEPS} · epoch" in log and "eval loss" in log and "run succeeded" in log
    assert "{'loss'" not in log and "\r" not in log and "it/s]" not in log, log[-3000:]


def test_run_folder_holds_config_manifest_adapter(trained_run):
    folder = RunFolder(trained_run.run_dir)
    config = yaml.safe_load(folder.config.read_text())
    assert config["base_model"] == "demo-tiny" and config["max_steps"] == STEPS
    manifest = folder.read_manifest()
    assert manifest["dataset"]["id"] == trained_run.dataset_id and len(manifest["dataset"]["content_hash"]) == 64
    assert manifest["seed"] == 42 and manifest["libraries"]["trl"] and manifest["libraries"]["torch"]
    assert manifest["hardware"]["cpu_cores"] >= 1
    assert manifest["method"]["asked"] == "qlora" and manifest["method"]["used"] == expected_method("qlora")
    assert manifest["trainable_parameters"] > 0 and manifest["fit_check"]["peak_bytes"] > 0
    adapter = trained_run.adapter_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json"):
        assert (adapter / name).exists(), name
    generation = json.loads((adapter / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    assert folder.read_status()["state"] == "succeeded"


def _greedy(model, tokenizer, question: str) -> str:
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=40, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_the_adapter_answers_like_the_training_data(trained_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = RunFolder(trained_run.run_dir).read_manifest()["base_model"]["source"]
    tokenizer = AutoTokenizer.from_pretrained(trained_run.adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(source)
    question, answer = FAQ_PAIRS[0]
    before = _greedy(base, tokenizer, question)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source), trained_run.adapter_dir)
    after = _greedy(tuned, tokenizer, question)
    assert after != before
    assert difflib.SequenceMatcher(None, after, answer).ratio() > 0.8, (after, answer)
    assert difflib.SequenceMatcher(None, before, answer).ratio() < 0.3


def test_cli_lists_and_follows_the_run(trained_run):
    import subprocess
    import sys

    def studio(*args):
        return subprocess.run([sys.executable, "-m", "studio", *args, "--home", str(trained_run.ws.home)],
                              capture_output=True, text=True, timeout=120)

    listed = studio("runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["id"] == trained_run.run_id)
    assert row["status"] == "succeeded" and row["progress"] == 1.0 and row["step"] == STEPS
    followed = studio("runs", "show", trained_run.run_id, "--follow")
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    assert f"started at step 0 of {STEPS}" in lines
    assert any(ln.startswith(f"step {STEPS}/{STEPS} · epoch") for ln in lines)
    assert any(ln.startswith(f"step 20/{STEPS} · epoch") and "eval loss" in ln for ln in lines)
    assert f"Run {trained_run.run_id} succeeded at step {STEPS}/{STEPS}." in followed.stdout
    shown = studio("runs", "show", trained_run.run_id)
    assert "status    succeeded" in shown.stdout and "adapter   " in shown.stdout and "config    " in shown.stdout
    when = r"^when      finished \w{3} \d+, \d\d:\d\d UTC \(.+\) after \d+ (s|min.*)$"  # in words, not ISO stamps
    assert re.search(when, shown.stdout, re.M), shown.stdout
    # the two loss curves read in words (quick-test on 12 rows evaluates every 20 steps)
    assert "learning  " in shown.stdout and "Held-out loss" in shown.stdout
