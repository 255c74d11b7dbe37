"""The Train and Runs tabs: built inside the app, and their handlers called as plain functions."""

import re

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
    assert "learning step" not in message  # 100 steps
    # the balanced preset packs this small dataset into a few steps: said at Start, also without Check fit
    message, _ = train_tab.start(ws, dataset.id, "demo-tiny", "balanced", "", False, *_values("balanced"))
    assert re.search(r"Only \d+ learning steps?: on \d+ rows the adapter will change little", message), message


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
    # the test's workspace is not the default one: the line names it, so it works in a new terminal
    assert runs_tab.run_command(ws, run_id).startswith(
        f"studio train --home {ws.home} --data {dataset.id} --model demo-tiny")
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


def _skipped(update) -> bool:
    return isinstance(update, type(gr.skip()))


def test_a_run_newer_than_the_page_is_picked_from_the_table_without_error(ws, dataset):
    """The Run dropdown of a page opened before the run existed: a click on the run's row (the timer put it in
    the table) sends the current choices with it, so the dropdown accepts it (it used to answer 'Value: run-…
    is not in the list of choices: []'); the timer keeps the list current and lets a deleted run go."""
    page_opened = gr.Dropdown(label="Run", choices=runs_tab.run_choices(ws), value=None)
    _, run_id = train_tab.start(ws, dataset.id, "demo-tiny", "quick-test", "", False, *_values())
    table = runs_tab.runs_table(ws)
    with pytest.raises(gr.Error, match="is not in the list of choices"):
        page_opened.preprocess(run_id)
    picked = runs_tab.pick_row(ws, table, gr.SelectData(None, {"index": [0, 2], "value": "queued"}))
    assert picked.value == run_id and gr.Dropdown(choices=picked.choices).preprocess(run_id) == run_id

    n = len(runs_tab.run_page())
    first = runs_tab.tick(ws, run_id, None, None, n)  # the first tick after the click
    picker, cancel, resume, listed = first[-4:]
    assert [v for _, v in picker.choices] == [run_id] and "value" not in picker.constructor_args
    assert (cancel.interactive, resume.interactive) == (True, False)  # queued: cancel, not resume
    again = runs_tab.tick(ws, run_id, None, listed, n)
    assert _skipped(again[-4]) and "queued" in again[1]  # same list: the dropdown is left as the user set it

    scheduler.cancel(ws, run_id)
    picker, cancel, resume, listed = runs_tab.tick(ws, run_id, None, listed, n)[-4:]
    assert "cancelled" in picker.choices[0][0] and (cancel.interactive, resume.interactive) == (False, True)
    runs.delete(ws, run_id)
    ended = runs_tab.tick(ws, run_id, None, listed, n)
    assert ended[-4].choices == [] and ended[-4].value is None and "No run selected" in ended[1]
    assert (ended[-3].interactive, ended[-2].interactive) == (False, False)


def test_the_dataset_list_picks_the_newest_version_but_never_overrides_a_pick(ws):
    """A fresh page, a refresh or an opened list shows the newest version picked while nothing (or a deleted
    version) is; a version saved since the page loaded fills an empty list on the tab's tick; a pick stays."""
    from studio.ui.picks import fill_if_empty, keep_or_newest

    assert keep_or_newest([]) is None and fill_if_empty([], None) is None
    assert keep_or_newest([("new", "b"), ("old", "a")], "a") == "a"  # the expert's pick stays
    assert keep_or_newest([("new", "b"), ("old", "a")], "gone") == "b"  # a deleted pick gives way to the newest
    assert fill_if_empty([("new", "b")], "a") is None and fill_if_empty([("new", "b")], "") == "b"

    assert train_tab.listed_datasets(ws).value is None and _skipped(train_tab.fill_datasets(ws, None))
    older = save_qa_dataset(ws, name="older")
    newer = save_qa_dataset(ws, name="newer")  # saved since the page loaded, the list still empty
    filled = train_tab.fill_datasets(ws, None)
    assert filled.value == newer.id and [v for _, v in filled.choices] == [newer.id, older.id]
    assert _skipped(train_tab.fill_datasets(ws, older.id))  # picked: the tick sends nothing
    assert train_tab.listed_datasets(ws).value == newer.id  # page load
    assert train_tab.listed_datasets(ws, older.id).value == older.id  # refresh / open with a pick
