"""Chat: the client helpers, the exact request as curl and Python (run for real), corrections landing
in a dataset version, and the Chat tab driven through gradio_client against the trained run."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from studio.core.errors import InvalidInput
from studio.evaluation import feedback
from studio.serving import chat, client, launch


def test_gradio_content_is_flattened_into_messages():
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "!"}]},
               {"role": "assistant", "content": ""}]
    assert chat.build_messages(history, "Where is my order?", " Be brief. ") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Where is my order?"}]


def test_settings_are_checked_and_become_the_request_body():
    with pytest.raises(InvalidInput, match="Temperature 3"):
        chat.Settings(temperature=3).check()
    with pytest.raises(InvalidInput, match="Top-p 0"):
        chat.Settings(top_p=0).check()
    body = chat.chat_body("run-x", [{"role": "user", "content": "q"}], chat.Settings(top_p=0.9, seed=7))
    assert body == {"model": "run-x", "messages": [{"role": "user", "content": "q"}], "max_tokens": 256,
                    "temperature": 0.0, "top_p": 0.9, "seed": 7, "stream": True}


def test_a_correction_without_a_run_starts_its_own_dataset(ws):
    from studio.data.store import load_split

    first = feedback.add_correction(ws, [{"role": "user", "content": "What does BP mean?"}], "Blood pressure.",
                                    rejected="Big problem.")
    assert first.name == "chat-corrections" and first.source_format == "feedback" and first.rows_train == 1
    second = feedback.add_correction(ws, [{"role": "user", "content": "What does PRN mean?"}], "As needed.")
    rows = load_split(ws, second.id, "train").to_list()
    assert [r["messages"][-1]["content"] for r in rows] == ["Blood pressure.", "As needed."]
    assert second.mapping["corrections"] == 2 and len(feedback.corrections(ws)) == 2
    assert feedback.corrections(ws)[0]["rejected"] == "Big problem."
    with pytest.raises(InvalidInput, match="corrected answer is empty"):
        feedback.add_correction(ws, [{"role": "user", "content": "q"}], "  ")
    with pytest.raises(InvalidInput, match="no question"):
        feedback.add_correction(ws, [], "answer")


@pytest.mark.slow
def test_a_correction_on_a_run_extends_the_run_dataset(trained_run):
    from studio.data.store import get_version, load_split

    ws = trained_run.ws
    original = get_version(ws, trained_run.dataset_id)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Do you ship abroad?"}]
    version = feedback.add_correction(ws, messages, "Yes, to every EU country.", rejected="Damaged items.",
                                      run_id=trained_run.run_id)
    rows = load_split(ws, version.id, "train").to_list()
    assert len(rows) == original.rows_train + 1
    assert rows[-1]["messages"] == [*messages, {"role": "assistant", "content": "Yes, to every EU country."}]
    assert version.rows_val == original.rows_val and version.mapping["feedback_of"] == original.id
    assert version.name.startswith(original.name) and get_version(ws, trained_run.dataset_id) == original


def test_picking_a_run_sets_the_system_prompt_it_was_trained_with(ws, tmp_path):
    """Chat asks as Evaluate and Publish do: with the run's dataset system prompt, empty when it had none;
    an endpoint leaves the box as the user set it."""
    import datasets
    from test_publish_helpers import config_only_adapter, register_run

    from studio.data.store import save_version
    from studio.ui.chat_tab import trained_system_prompt

    system = "You answer for the support team, in one sentence."
    rows = [{"messages": [{"role": "user", "content": "Where is my order?"},
                          {"role": "assistant", "content": "Follow the tracking link."}]}]
    version, _ = save_version(ws, content_hash="s" * 64, name="faq", train=datasets.Dataset.from_list(rows),
                              val=datasets.Dataset.from_list(rows), base_model="demo-tiny", template="model",
                              system_prompt=system)
    with_prompt = register_run(ws, config_only_adapter(tmp_path / "a"), "run-20260101-000000-sysp",
                               dataset_id=version.id)
    assert trained_system_prompt(ws, with_prompt) == (system, "System prompt set to the one this run was trained "
                                                              "with.")
    without = register_run(ws, config_only_adapter(tmp_path / "b"), "run-20260101-000000-none")
    prompt, why = trained_system_prompt(ws, without)
    assert prompt == "" and "trained without one" in why
    assert trained_system_prompt(ws, "ep-20260101-remote") == (None, "")
    assert trained_system_prompt(ws, None) == (None, "")


@pytest.fixture(scope="module")
def run_endpoint(trained_run):
    from studio.serving import endpoints

    ep = launch.start_for_run(trained_run.ws, trained_run.run_id)
    yield ep
    endpoints.stop_endpoint(trained_run.ws, ep.id)


@pytest.mark.slow
def test_copied_curl_and_python_requests_give_the_chat_answer(run_endpoint, trained_run, tmp_path):
    settings = chat.Settings(max_new_tokens=30, seed=5)
    messages = chat.build_messages([], "How do I reset my password?", "")
    streamed = "".join(client.stream_chat(run_endpoint.url, chat.chat_body(trained_run.run_id, messages, settings)))
    body = chat.chat_body(trained_run.run_id, messages, settings, stream=False)
    assert client.complete_chat(run_endpoint.url, body) == streamed
    script = tmp_path / "request.py"
    script.write_text(chat.as_python(run_endpoint.url, body))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == streamed.strip()
    if shutil.which("curl"):
        import json

        out = subprocess.run(["bash", "-c", chat.as_curl(run_endpoint.url, body)], capture_output=True, text=True,
                             timeout=120)
        assert json.loads(out.stdout)["choices"][0]["message"]["content"] == streamed


@pytest.mark.slow
def test_chat_tab_side_by_side_through_gradio_client(run_endpoint, trained_run):
    from conftest import free_port
    from gradio_client import Client

    from studio.ui.app import build_app

    app = build_app(trained_run.ws)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        status, left_pick, right_pick, system, left, right = client.predict(trained_run.run_id,
                                                                            api_name="/chat_pick")
        left_model, right_model = left_pick["value"], right_pick["value"]  # dropdown updates
        assert "ready" in status and right_model == trained_run.run_id and left_model == "demo-tiny"
        assert system == "" and "System prompt cleared: this run was trained without one." in status
        left, right, message, curl, python, _ = client.predict(
            trained_run.run_id, "How do I reset my password?", left_model, right_model, [], [], "", 0, 1, 40, None,
            api_name="/chat_send")
        assert message == ""
        assert [m["role"] for m in left] == [m["role"] for m in right] == ["user", "assistant"]
        base_answer, tuned_answer = chat.flatten(left[1]["content"]), chat.flatten(right[1]["content"])
        assert base_answer and tuned_answer and base_answer != tuned_answer
        assert "Forgot password" in tuned_answer
        assert run_endpoint.url in curl and trained_run.run_id in curl and "InferenceClient" in python
    finally:
        app.close()
