"""The Train and Runs tabs: built inside the app, and their handlers called as plain functions."""

import gradio as gr
import pytest
from conftest import save_qa_dataset

from studio.training import runs, scheduler
from studio.training.config import PRESET_FIELDS
from studio.training.presets import load_preset
from studio.ui import runs_tab, train_tab
from studio.ui.app import build_app

STEPS = load_preset("quick-test").overrides["max_steps"]  # the trained_run fixture uses quick-test


@pytest.fixture
def dataset(ws):
    return save_qa_dataset(ws)


def _values(preset="quick-test", **changes):
    values = train_tab.preset_values(preset)
    for key, value in changes.items():
        values[PRESET_FIELDS.index(key)] = value
    return values


def test_both_tabs_build_in_the_app_with_named_events(ws):
    app = build_app(ws)
    names = {dep.get("api_name") for dep in app.config["dependencies"]}
    assert {"train_fit_check", "train_start", "train_command", "train_preset", "runs_poll", "runs_cancel",
            "runs_resume", "runs_rerun", "runs_delete", "runs_show"} <= names
    labels = {getattr(block, "label", None) for block in app.blocks.values()}
    assert {"Dataset version", "Base model", "Preset", "lora r", "learning rate", "Run"} <= labels
    helps = [block for block in app.blocks.values() if getattr(block, "label", None) == "micro batch size"]
    assert helps and "out of memory" in helps[0].info


def test_preset_values_and_overrides(ws):
    values = train_tab.preset_values("quick-test")
    assert len(values) == len(PRESET_FIELDS) and values[PRESET_FIELDS.index("max_steps")] == STEPS
    assert train_tab.overrides_of("quick-test", values) == {}
    changed = _values(lora_r=8, target_modules="q_proj, v_proj", learning_rate=0.001)
    assert train_tab.overrides_of("quick-test", changed) == {"lora_r": 8, "target_modules": ["q_proj", "v_proj"],
                                                            "learning_rate": 0.001}
    assert "quick-test" in train_tab.preset_text("quick-test") and "CPU" in train_tab.preset_text("quick-test")
    assert "gated" in train_tab.model_info("meta-llama/Llama-3.1-8B-Instruct")


def test_fit_check_command_and_start(ws, dataset):
    text, changes = train_tab.check_fit(ws, dataset.id, "demo-tiny", "quick-test", *_values())
    assert "✅ **Fits" in text and "peak" in text and f"{STEPS} steps" in text and changes == {}
    with pytest.raises(gr.Error, match="'lora_r' input should be greater than or equal to 1"):
        train_tab.check_fit(ws, dataset.id, "demo-tiny", "quick-test", *_values(lora_r=0))
    with pytest.raises(gr.Error, match="No dataset version is chosen"):
        train_tab.check_fit(ws, None, "demo-tiny", "quick-test", *_values())
    line = train_tab.show_command(dataset.id, "demo-tiny", "quick-test", "v1", *_values(lora_r=8))
    assert line == f"studio train --data {dataset.id} --model demo-tiny --preset quick-test --set lora_r=8 --name v1"
    message, run_id = train_tab.start(ws, dataset.id, "demo-tiny", "quick-test", "v1", False, *_values(lora_r=8))
    run = runs.get_run(ws, run_id)
    assert run.status == "queued" and run.config["lora_r"] == 8 and run.name == "v1" and run_id in message


def test_apply_the_change_that_fits():
    values = _values("balanced")
    changed = train_tab.apply_changes({"micro_batch_size": 1, "gradient_accumulation": 16}, *values)
    assert changed[PRESET_FIELDS.index("micro_batch_size")] == 1
    assert changed[PRESET_FIELDS.index("gradient_accumulation")] == 16
    with pytest.raises(gr.Error, match="no suggested change"):
        train_tab.apply_changes({}, *values)


def test_runs_tab_actions_on_a_queued_run(ws, dataset):
    _, run_id = train_tab.start(ws, dataset.id, "demo-tiny", "quick-test", "", False, *_values())
    table = runs_tab.runs_table(ws)
    assert list(table["run"]) == [run_id] and table.iloc[0]["status"] == "queued"
    assert runs_tab.default_run(ws) == run_id
    status, progress, loss, lr, log, config, manifest = runs_tab.run_view(ws, run_id)
    assert "queued" in status and "0 run(s) before it" in status and loss.empty and config["max_steps"] == STEPS
    assert "cancelled" in runs_tab.cancel_run(ws, run_id)
    assert "from the start" in runs_tab.resume_run(ws, run_id)
    said, new_id = runs_tab.rerun_run(ws, run_id)
    assert new_id != run_id and new_id in said
    assert runs_tab.run_command(ws, run_id).startswith(f"studio train --data {dataset.id} --model demo-tiny")
    scheduler.cancel(ws, run_id)
    with pytest.raises(gr.Error, match="Tick"):
        runs_tab.delete_run(ws, run_id, False)
    assert "Deleted" in runs_tab.delete_run(ws, run_id, True)
    with pytest.raises(gr.Error, match="There is no run"):
        runs_tab.run_view(ws, run_id)


@pytest.mark.slow
def test_run_page_of_a_trained_run_shows_curves_log_and_manifest(trained_run):
    status, progress, loss, lr, log, config, manifest = runs_tab.run_view(trained_run.ws, trained_run.run_id)
    assert "succeeded" in status and "Adapter ready" in status and "100%" in progress
    assert set(loss["curve"]) == {"training loss", "held-out loss"} and len(loss) == STEPS + STEPS // 20
    assert len(lr) == STEPS and f"run succeeded at step {STEPS}" in log
    assert config["base_model"] == "demo-tiny" and manifest["dataset"]["id"] == trained_run.dataset_id


def test_a_finished_runs_page_is_sent_once_not_every_tick(trained_run):
    n = len(runs_tab.run_page())
    first = runs_tab.poll_view(trained_run.ws, trained_run.run_id, None, n)
    key = first[-1]
    assert key is not None and key[:2] == (trained_run.run_id, "succeeded") and len(first) == n + 1
    again = runs_tab.poll_view(trained_run.ws, trained_run.run_id, key, n)
    assert again[-1] == key and all(isinstance(v, type(gr.skip())) for v in again[:-1])
    assert runs_tab.finished_key(trained_run.ws, None) is None
