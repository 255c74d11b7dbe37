"""Bad input on the command line, as a careless user types it: each is refused before anything starts, with
exit code 2 and a message that names the problem and the fix; nothing is saved by a refused command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import save_qa_dataset


def studio(*args: str, stdin: str | None = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, input=stdin,
                          timeout=120)


@pytest.mark.parametrize(("args", "said"), [
    (["serve", "--model", "demo-tiny", "--max-batch-size", "0", "--dry-run"],
     "argument --max-batch-size: 0 is out of range: use 1 or more"),  # it used to start and hang every request
    (["serve", "--model", "demo-tiny", "--port", "99999", "--dry-run"],
     "argument --port: 99999 is out of range: use 1 to 65535"),  # a uvicorn traceback
    (["runs", "show", "run-x", "--log", "-5"], "argument --log: -5 is out of range: use 0 or more"),
    (["feedback", "export", "--min", "0"], "argument --min: 0 is out of range: use 1 or more"),
    (["runs", "cancel", "run-x", "--wait", "soon"], "argument --wait: 'soon' is not a number of seconds"),
    (["eval", "run", "run-x", "--golden", "/no/such/golden.csv"],
     "The golden set /no/such/golden.csv does not exist. Give the path of a CSV"),
    (["eval", "run", "run-x", "--golden", "/"], "The golden set / is a folder."),
    (["chat", "ask", "run-x", "   "], "The question is empty. Type the question"),  # no endpoint is started
    (["users", "passwd", "nobody"], "There is no user named 'nobody'"),  # before asking for a password
])
def test_refused_before_anything_starts(studio_home, args, said):
    out = studio(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert said in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_password_that_never_comes_is_said(studio_home):
    out = studio("users", "add", "bob")  # standard input empty, no STUDIO_PASSWORD
    assert out.returncode == 2 and "No password was given" in out.stderr and "STUDIO_PASSWORD" in out.stderr


def test_a_correction_for_a_run_that_does_not_exist_saves_nothing(ws):
    out = studio("chat", "correct", "--run", "run-nope", "--question", "Where is it?", "--corrected", "Here.")
    assert out.returncode == 2 and "run-nope" in out.stderr, out.stderr
    assert not list(ws.datasets_dir.iterdir())  # it used to save a 'chat-corrections' dataset and exit 0


def test_training_settings_are_checked_against_the_words_and_the_model(ws):
    data = save_qa_dataset(ws).id
    lr = studio("train", "--data", data, "--model", "demo-tiny", "--set", "lr=1e-4", "--dry-run")
    assert lr.returncode == 2 and "Did you mean 'learning_rate'?" in lr.stderr
    empty = studio("train", "--data", "", "--model", "demo-tiny", "--dry-run")
    assert empty.returncode == 2 and "No dataset version was chosen" in empty.stderr
    # peft would fail the run once started, and resuming it would fail again: refused at once
    bogus = studio("train", "--data", data, "--model", "demo-tiny", "--set", "target_modules=bogus_proj")
    assert bogus.returncode == 2 and "has no layer called bogus_proj" in bogus.stderr and "q_proj" in bogus.stderr
    assert not list(ws.runs_dir.iterdir())
    # typed as a form field or after --set: a comma-separated list
    listed = studio("train", "--data", data, "--model", "demo-tiny", "--set", "target_modules=q_proj, v_proj",
                    "--json", "--dry-run")
    assert listed.returncode == 0 and '"target_modules": [\n      "q_proj",\n      "v_proj"\n    ]' in listed.stdout
