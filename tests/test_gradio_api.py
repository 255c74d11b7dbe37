"""The studio's main actions from a script, through `gradio_client` and the tabs' named endpoints, against a
real `python app.py`: import a CSV, check and save it; start a run, follow it, cancel it; evaluate a trained
run on a golden set; publish it to the embedded endpoint, verified; chat with what was published. Errors come
back as the same plain messages the page shows. The trained run is the test session's (no second training)."""

from __future__ import annotations

import re
import time

import pytest
from browser import ROOT, studio_process
from conftest import free_port
from device import PUBLISH_VERDICTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SAMPLES = ROOT / "assets" / "samples"
MAIN_ENDPOINTS = {"/data_inspect", "/data_use_sample", "/data_check", "/data_save", "/train_preset", "/train_fit_check",
                  "/train_start", "/runs_poll", "/runs_show", "/runs_cancel", "/chat_sources", "/chat_pick",
                  "/chat_send", "/eval_run", "/publish_preview", "/publish", "/deployments_list", "/deployment_verify",
                  "/system_report"}


def value(output):
    """A component update arrives as a dict; its value is what a person sees."""
    return output.get("value") if isinstance(output, dict) and "__type__" in output else output


def choices(output) -> list:
    """The option values of a dropdown's update."""
    return [v for _, v in output["choices"]]


class Studio:
    """A script's view of the studio: call an endpoint with its inputs named by the labels the page shows
    (the rest keep their defaults), get its outputs by label too ("#N" for the N-th, unlabelled one): their
    values, and in `.updates` the component updates as they came."""

    def __init__(self, client, ws):
        self.client, self.ws = client, ws
        self.api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]

    def __call__(self, name: str, **inputs) -> dict:
        spec = self.api[name]
        args = [inputs.pop(p["label"]) if p["label"] in inputs else p["parameter_default"] for p in spec["parameters"]]
        assert not inputs, f"{name} has no inputs labelled {list(inputs)}"
        outputs = self.client.predict(*args, api_name=name)
        outputs = outputs if len(spec["returns"]) > 1 else [outputs]
        labels = [f"#{n}" if r["label"].startswith("value_") else r["label"] for n, r in enumerate(spec["returns"])]
        self.updates = dict(zip(labels, outputs, strict=True))
        return {label: value(out) for label, out in self.updates.items()}


@pytest.fixture(scope="module")
def studio(trained_run):
    """The studio on the session's trained workspace; the endpoints started here are stopped at the end."""
    from gradio_client import Client

    from studio.serving import endpoints

    ws = trained_run.ws
    before = {ep.id for ep in endpoints.list_endpoints(ws)}
    try:
        with studio_process(ws.home, free_port()) as url:
            # download_files=False: the run page's manifest (a JSON output) holds {"path": ...} entries, which
            # gradio_client would otherwise take for files to download (and the studio rightly refuses to serve)
            yield Studio(Client(url, verbose=False, download_files=False), ws)
    finally:
        for ep in endpoints.list_endpoints(ws, include_stopped=False):
            if ep.id not in before and ep.kind == "local":
                endpoints.stop_endpoint(ws, ep.id, reason="test over")


def test_the_main_actions_are_named_endpoints(studio):
    assert MAIN_ENDPOINTS <= set(studio.api), MAIN_ENDPOINTS - set(studio.api)


def test_a_bad_file_comes_back_as_its_message(studio, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "notes.csv"
    bad.write_text("")
    # the page shows it next to the file (not a toast), so the API returns it as that text, marked ❌
    found = studio("/data_inspect", **{"1. Your spreadsheet (CSV, TSV, XLSX, JSONL, JSON or Parquet)":
                                       handle_file(str(bad))})
    info = found["#0"]
    assert info.startswith("❌") and "'notes.csv' is empty (0 bytes).** Export the spreadsheet again" in info
    with pytest.raises(Exception, match=r"could not be read: 'notes.csv' is empty \(0 bytes\)"):
        studio("/data_save", **{"Version name": "empty"})


def test_import_check_save_then_start_follow_and_cancel_a_run(studio):
    from gradio_client import handle_file

    # data: the file, the guessed columns, the check, the save (one session: the client keeps the tab's state)
    found = studio("/data_inspect", **{"1. Your spreadsheet (CSV, TSV, XLSX, JSONL, JSON or Parquet)":
                                       handle_file(str(SAMPLES / "support_faq.csv"))})
    assert "50 rows" in found["#0"]
    columns = {role: found[role] for role in ("Question / instruction", "Answer")}
    assert columns == {"Question / instruction": "question", "Answer": "answer"}
    checked = studio("/data_check", **columns, **{"Version name": "faq by api"})
    assert "45 training and 5 validation rows" in checked["#0"]
    saved = studio("/data_save", **columns, **{"Version name": "faq by api"})
    dataset_id = saved["Version"]
    assert "Saved" in saved["#0"] and dataset_id in saved["#0"]
    from studio.core import access, audit  # no login here: the machine's user, from the web client's address

    made = next(e for e in audit.events(studio.ws) if e["action"] == "data.import" and e["target"] == dataset_id)
    assert (made["actor"], made["origin"]) == (access.machine_actor().name, "127.0.0.1"), made

    # train: the list of versions (refreshed as the page does: a dropdown only takes the choices it was last
    # given), the preset's values, the fit check, start
    studio("/train_datasets")
    assert dataset_id in choices(studio.updates["Dataset version"])
    preset = studio("/train_preset", Preset="quick-test")
    settings = {k: v for k, v in preset.items() if not k.startswith("#")}
    chosen = {"Dataset version": dataset_id, "Base model": "demo-tiny", "Preset": "quick-test"}
    fit = studio("/train_fit_check", **chosen, **settings)["#0"]
    assert "Fits" in fit and f"for {settings['max steps']} steps" in fit
    started = studio("/train_start", **chosen, **settings, **{"Run name (optional)": "api run"})["#0"]
    run_id = re.search(r"run-[0-9]+-[0-9]+-[0-9a-f]+", started).group(0)

    # follow it until it trains, cancel it, follow it until it stops
    studio("/runs_list")
    assert run_id in choices(studio.updates["Run"])
    page = poll(studio, run_id, "running|succeeded|failed|cancelled")
    assert "**running**" in page["#1"], page["#1"]
    assert [row[2] for row in page["Runs (newest first)"]["data"] if row[0] == run_id] == ["running"]
    assert "Cancel sent" in studio("/runs_cancel", Run=run_id)["#0"]
    page = poll(studio, run_id, "succeeded|failed|cancelled")
    assert "**cancelled**" in page["#1"], page["#1"]


def poll(studio, run_id: str, statuses: str, timeout_s: float = 300) -> dict:
    """The run page, as the Runs tab's timer gets it, once the run is in one of these statuses."""
    deadline = time.monotonic() + timeout_s
    while True:
        page = studio("/runs_poll", Run=run_id)
        if re.search(rf"\*\*({statuses})\*\*", page["#1"]) or time.monotonic() > deadline:
            return page
        time.sleep(0.5)


def test_a_run_newer_than_the_session_is_picked_after_a_tick(studio, trained_run):
    """A page opened before a run existed (its own session), the run started elsewhere: its dropdown turned it
    down ('Value: run-… is not in the list of choices'); the timer's tick now sends the current list, so
    picking the run shows it (Cancel and Resume stay endpoints as before)."""
    from gradio_client import Client

    from studio.training import runs, scheduler, submit

    ws = trained_run.ws
    page = Studio(Client(studio.client.src, verbose=False, download_files=False), ws)
    page("/runs_poll", Run=trained_run.run_id)
    run = submit.rerun(ws, trained_run.run_id)
    try:
        run = scheduler.cancel(ws, run.id, wait=60)
        with pytest.raises(Exception, match="is not in the list of choices"):
            page("/runs_show", Run=run.id)  # the bug's cause: the session still has the old list
        page("/runs_poll", Run=trained_run.run_id)
        assert run.id in choices(page.updates["Run"]) and "value" not in page.updates["Run"]
        shown = page("/runs_show", Run=run.id)
        assert f"`{run.id}`" in shown["#0"] and "**cancelled**" in shown["#0"], shown["#0"]
        assert "queued again" in page("/runs_resume", Run=run.id)["#0"]  # the endpoint as before
    finally:
        if runs.get_run(ws, run.id).status in runs.ACTIVE:
            scheduler.cancel(ws, run.id, wait=60)
        runs.delete(ws, run.id)


def test_evaluate_publish_and_chat_with_a_trained_run_by_api(studio, trained_run):
    from studio.ui.evaluate_tab import GOLDEN

    run_id = trained_run.run_id
    page = studio("/runs_show", Run=run_id)
    assert "**succeeded**" in page["#0"] and "Adapter ready" in page["#0"]
    assert {row[2] for row in page["loss curves"]["data"]} == {"training loss", "held-out loss"}

    # evaluate: two golden questions, base and tuned
    studio("/eval_refresh")
    assert run_id in choices(studio.updates["Run"])
    golden = {"headers": ["question", "reference answer"],
              "data": [["How do I reset my password?", "Open the sign-in page, choose Forgot password."],
                       ["Where is my order?", "Follow your parcel with the tracking number in your email."]]}
    evaluation = studio("/eval_run", Run=run_id, Questions=GOLDEN, **{
        "Golden set — type or paste your questions and answers": golden, "Max new tokens": 24,
        "Held-out rows for the loss": 2})
    assert "2 questions" in evaluation["#0"] and "Tuned model" in evaluation["#0"]
    results = evaluation["Every question: both answers and their scores (click a cell for its full text)"]["data"]
    # both are training questions of the run (conftest's FAQ), and the evaluation says so
    assert [row[0] for row in results] == ["(in training) How do I reset my password?",
                                           "(in training) Where is my order?"]
    assert "All golden questions are also in the run's training data" in evaluation["#0"]

    # publish: the adapter on the base model, on this machine, verified (plain Python functions: positional)
    options = {"name": "api", "merged": False}
    plan = studio.client.predict(run_id, "local", options, api_name="/publish_preview")
    assert plan["slot"] == "local:api" and plan["steps"]
    deployment = studio.client.predict(run_id, "local", options, api_name="/publish")
    assert deployment["status"] == "healthy" and deployment["verification"]["verdict"] in PUBLISH_VERDICTS, \
        deployment["verification"]
    assert deployment["id"] in [d["id"] for d in studio.client.predict(api_name="/deployments_list")]

    # chat with what was published: added by its URL, as any TGI server would be
    endpoint = studio("/chat_add_server", **{"Server URL": deployment["url"]})["Chat with"]
    assert endpoint in choices(studio.updates["Chat with"])
    picked = studio("/chat_pick", **{"Chat with": endpoint})
    answered = studio("/chat_send", **{"Chat with": endpoint, "Your question": "Where is my order?",
                                       "Left pane": picked["Left pane"], "Right pane": picked["Right pane"],
                                       "Max new tokens": 24})
    replies = [m for m in answered["Base model"] + answered["Tuned model"] if m["role"] == "assistant"]
    assert replies and all(m["content"] for m in replies)
