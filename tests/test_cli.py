import json
import subprocess
import sys


def studio(*args, env=None):
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, env=env)


def test_doctor_text_and_json(studio_home):
    text = studio("doctor")
    assert text.returncode == 0, text.stderr
    assert "Workspace" in text.stdout and str(studio_home) in text.stdout
    as_json = studio("doctor", "--json")
    facts = json.loads(as_json.stdout)
    assert facts["workspace"] == str(studio_home)
    assert facts["libraries"]["transformers"].startswith("5.")
    assert set(facts["hf_token"]) == {"set", "source"}


def test_hf_token_value_is_never_printed(studio_home):
    import os

    env = {**os.environ, "HF_TOKEN": "hf_secretvalue123"}
    out = studio("doctor", "--json", env=env)
    assert "hf_secretvalue123" not in out.stdout
    assert json.loads(out.stdout)["hf_token"] == {"set": True, "source": "HF_TOKEN"}


def test_failure_is_one_line_and_nonzero(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = studio("doctor", "--home", str(blocker / "home"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in out.stderr


def test_models_list_and_show(studio_home):
    out = studio("models", "list", "--json")
    assert out.returncode == 0, out.stderr
    ids = [e["id"] for e in json.loads(out.stdout)]
    assert "demo-tiny" in ids and "Qwen/Qwen2.5-0.5B-Instruct" in ids
    shown = studio("models", "show", "meta-llama/Llama-3.1-8B-Instruct")
    assert shown.returncode == 0 and "gated" in shown.stdout
    bad = studio("models", "show", "no such model")
    assert bad.returncode == 2 and "neither an existing folder nor a hub id" in bad.stderr


def test_home_before_or_after_the_verb(tmp_path):
    before = studio("--home", str(tmp_path / "a"), "doctor", "--json")
    after = studio("doctor", "--json", "--home", str(tmp_path / "b"))
    assert json.loads(before.stdout)["workspace"] == str(tmp_path / "a")
    assert json.loads(after.stdout)["workspace"] == str(tmp_path / "b")
