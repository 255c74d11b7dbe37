"""Preference and KTO files through the one import path: the mapping guessed, both answers previewed with
the template, the checks (chosen == rejected, empty answers, too long, bad labels) and the saved version."""

from __future__ import annotations

import csv
import json

import pytest

from studio.core.errors import InvalidInput
from studio.data import importer


def _csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_preference_csv_imports_with_its_mapping_and_checks(ws, tmp_path):
    from studio.data.store import load_split

    long_answer = "refund " * 300
    path = _csv(tmp_path / "prefs.csv", ["Prompt", "Chosen", "Rejected"], [
        ["How do I reset my password?", "Open the sign-in page and choose Forgot password.", "I do not know."],
        ["Where is my order?", "Follow your parcel with the tracking number.", "I do not know."],
        ["When do orders ship?", "Within two business days.", "Within two business days."],  # same answers
        ["How long do refunds take?", "", "I do not know."],  # empty chosen
        ["What does BP mean?", "BP means blood pressure.", long_answer],  # too long
        ["What does PRN mean?", "PRN means as needed.", "I do not know."],
    ])
    result = importer.import_file(ws, path, max_length=128, val_size=1)
    assert result.mapping == {"chosen": "Chosen", "rejected": "Rejected", "instruction": "Prompt"}
    report = result.report
    assert report["kind"] == "preference" and report["rows_train"] == 2 and report["rows_val"] == 1
    checks = {c["check"]: c["rows"] for c in report["checks"]}
    assert checks == {"chosen same as rejected": [4], "empty answer": [5], "too long": [6]}
    assert report["tokens"]["max"] > 128 and report["rows_over_max_length"] == 1
    first, second = result.prepared.previews[:2]
    assert first["row_label"].startswith("chosen") and second["row_label"].startswith("rejected")
    assert first["row"] == second["row"] and "<|im_start|>assistant" in first["text"]
    trained = "".join(p["text"] for p in second["pieces"] if p["trained"])
    assert trained.startswith("I do not know.")  # the rejected answer is the scored part, not the prompt
    version = result.version
    assert version.kind == "preference" and version.rows_rejected == 3
    row = load_split(ws, version.id, "train")[0]
    assert set(row) == {"prompt", "chosen", "rejected"} and row["prompt"][-1]["role"] == "user"
    rejected = (tmp_path / "r.csv")
    rejected.write_bytes((importer.Path(version.path) / "rejected.csv").read_bytes())
    assert "the chosen and rejected answers are the same" in rejected.read_text(encoding="utf-8-sig")
    preview = importer.preview_version(ws, version.id, rows=1)
    assert [p["row_label"].split()[0] for p in preview] == ["chosen", "rejected"]
    again = importer.import_file(ws, path, max_length=128, val_size=1)
    assert again.version.id == version.id and not again.created


def test_a_chat_prompt_with_chosen_and_rejected_in_jsonl(ws, tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}?"}],
             "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    result = importer.import_file(ws, path, val_size=0)
    assert result.mapping == {"chosen": "chosen", "rejected": "rejected", "messages": "messages"}
    assert result.report["rows_train"] == 4
    from studio.data.store import load_split

    row = load_split(ws, result.version.id, "train")[0]
    assert row["prompt"][0] == {"role": "system", "content": "Be brief."} and row["prompt"][-1]["role"] == "user"


def test_a_kto_file_and_its_label_check(ws, tmp_path):
    path = _csv(tmp_path / "thumbs.csv", ["prompt", "completion", "label"], [
        ["What does BP mean?", "Blood pressure.", "true"], ["What does BP mean?", "Big problem.", "👎"],
        ["What does PRN mean?", "As needed.", "maybe"],
    ])
    result = importer.import_file(ws, path, val_size=0)
    assert result.mapping == {"label": "label", "output": "completion", "instruction": "prompt"}
    assert result.report["kind"] == "kto" and result.report["rows_train"] == 2
    assert {c["check"] for c in result.report["checks"]} == {"label not good or bad"}
    assert result.version.kind == "kto"


def test_a_half_mapped_preference_file_is_refused(ws, tmp_path):
    path = _csv(tmp_path / "p.csv", ["q", "good", "bad"], [["a", "b", "c"]])
    inspection = importer.inspect_file(path)
    with pytest.raises(InvalidInput, match="both a chosen and a rejected"):
        importer.prepare(ws, inspection.table, {"instruction": "q", "chosen": "good"})


def test_training_refuses_a_method_that_does_not_fit_the_data(ws, tmp_path):
    from conftest import save_qa_dataset

    from studio.training import submit
    from studio.training.presets import build_config

    version = save_qa_dataset(ws)
    with pytest.raises(InvalidInput, match="DPO learns from pairs of a chosen and a rejected answer") as caught:
        submit.submit(ws, build_config("demo-tiny", version.id, "quick-test", {"objective": "dpo"}))
    assert "studio feedback export" in caught.value.fix


def test_studio_train_method_dry_run_picks_the_method_preset(ws, tmp_path, studio_home):
    import os
    import subprocess
    import sys

    path = _csv(tmp_path / "prefs.csv", ["prompt", "chosen", "rejected"],
                [[f"Question {i}?", f"Right {i}.", f"Wrong {i}."] for i in range(4)])
    version = importer.import_file(ws, path, val_size=0).version

    def studio(*args):
        return subprocess.run([sys.executable, "-m", "studio", "--json", *args], capture_output=True, text=True,
                              env={**os.environ, "STUDIO_HOME": str(studio_home)}, timeout=120)

    done = studio("train", "--data", version.id, "--model", "demo-tiny", "--method", "dpo", "--dry-run")
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)["config"]
    assert config["objective"] == "dpo" and config["learning_rate"] == 5e-6 and config["beta"] == 0.1
    refused = studio("train", "--data", version.id, "--model", "demo-tiny", "--dry-run")
    assert refused.returncode == 2 and "SFT learns from question/answer rows" in refused.stderr
    missing = studio("train", "--data", version.id, "--method", "dpo", "--from", "run-nope")
    assert missing.returncode == 2 and "run-nope" in missing.stderr


def test_the_truncate_policy_cuts_long_answers_instead_of_dropping_the_pair(ws, tmp_path):
    from transformers import AutoTokenizer

    from studio.data.store import load_split

    long_chosen, long_rejected = "refund " * 300, "parcel " * 300
    path = _csv(tmp_path / "long.csv", ["prompt", "chosen", "rejected"], [
        ["How long do refunds take?", "Five to seven business days. " + long_chosen, "I do not know."],
        ["Where is my order?", "Follow your parcel.", "Sorry. " + long_rejected],
        ["What does BP mean?", "BP " + long_chosen, "BP " + long_chosen + "and more"],  # the same once cut
        [("Why? " * 200).strip(), "Because.", "I do not know."],  # the prompt alone is too long
        ["What does PRN mean?", "PRN means as needed.", "I do not know."],
    ])
    result = importer.import_file(ws, path, max_length=96, val_size=0, length_policy="truncate")
    report = result.report
    assert report["rows_train"] == 3 and report["rows_truncated"] == 2
    checks = {(c["check"], c["action"]): c["rows"] for c in report["checks"]}
    assert checks == {("too long", "rejected"): [5], ("too long", "truncated"): [2, 3],
                      ("chosen same as rejected", "rejected"): [4]}
    tokenizer = AutoTokenizer.from_pretrained(str(ws.models_dir / "demo-tiny"))
    rows = load_split(ws, result.version.id, "train").to_list()
    first = rows[0]
    assert first["chosen"][0]["content"].startswith("Five to seven business days. refund refund")
    assert first["rejected"][0]["content"] == "I do not know."  # the short answer is left whole
    for row in rows:
        for key in ("chosen", "rejected"):
            assert len(tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=True,
                                                     return_dict=False)) <= 96
    dropped = importer.import_file(ws, path, max_length=96, val_size=0)  # the default policy drops them
    assert dropped.report["rows_train"] == 1 and dropped.report["rows_truncated"] == 0
