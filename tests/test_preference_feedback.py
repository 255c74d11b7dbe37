"""Feedback → preference data: corrections and thumbs as the Chat tab records them become the right pairs and
KTO rows; too little feedback is refused with its message; `studio feedback export` in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from studio.core.errors import InvalidInput
from studio.evaluation import feedback
from studio.evaluation.preference_export import collect, export


def _ask(question):
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]


def _feedback(ws, n):
    for i in range(n):
        feedback.add_correction(ws, _ask(f"What does code {i} mean?"), f"Code {i} means ward {i}.",
                                rejected=f"I am not sure about {i}.")
        feedback.add_thumb(ws, _ask(f"Who is on call {i}?"), f"Doctor {i}.", liked=i % 2 == 0)


def test_corrections_and_thumbs_become_pairs_and_kto_rows(ws):
    from studio.data.store import load_split

    _feedback(ws, 8)
    feedback.add_correction(ws, _ask("No reply kept"), "An answer.")  # no model reply: not a pair
    rows, counts = collect(ws, "preference")
    assert counts == {"ab_votes": 0, "corrections": 8, "thumbs": 0}
    assert rows[0]["prompt"] == _ask("What does code 0 mean?")
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Code 0 means ward 0."}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "I am not sure about 0."}]

    version, info = export(ws, "preference")
    assert version.kind == "preference" and version.rows_train == 8 and info["counts"]["corrections"] == 8
    assert load_split(ws, version.id, "train").column_names == ["prompt", "chosen", "rejected"]
    again, _ = export(ws, "preference")
    assert again.id == version.id  # the same feedback gives the same version

    kto, info = export(ws, "kto")
    assert kto.kind == "kto" and info["counts"] == {"ab_votes": 0, "corrections": 16, "thumbs": 8}
    rows = load_split(ws, kto.id, "train").to_list()
    liked = {r["completion"][0]["content"]: r["label"] for r in rows}
    assert liked["Doctor 0."] is True and liked["Doctor 1."] is False
    assert liked["Code 3 means ward 3."] is True and liked["I am not sure about 3."] is False


def test_too_little_feedback_is_refused_with_what_to_do(ws):
    _feedback(ws, 2)
    with pytest.raises(InvalidInput, match="Too little feedback to train on: 2 pairs: 0 from blind A/B votes, "
                                           "2 from corrections; at least 8") as caught:
        export(ws, "preference")
    assert "--kind kto" in caught.value.message and "Evaluate tab" in caught.value.fix
    with pytest.raises(InvalidInput, match="Too little feedback"):
        export(ws, "kto")  # 2 thumbs + 2 x 2 from corrections = 6
    with pytest.raises(InvalidInput, match="no question"):
        feedback.add_thumb(ws, [], "an answer", True)


def test_a_thumb_changed_or_undone_leaves_one_standing_rating(ws):
    """A person who presses thumbs-up, then thumbs-down on the same answer meant thumbs-down; pressing it again
    undoes it. The KTO rows must hold what stands, never the same answer as both good and bad."""
    question = _ask("Is ward 4 open at night?")
    feedback.add_thumb(ws, question, "Yes.", True, run_id="run-a", model="right")
    feedback.add_thumb(ws, question, "Yes.", False, run_id="run-a", model="right")
    feedback.add_thumb(ws, question, "It closes at 22:00.", True, run_id="run-a", model="left")
    feedback.add_thumb(ws, question, "Yes.", True, run_id="run-b", model="right")  # another run's answer
    assert [(t["answer"], t["run_id"], t["liked"]) for t in feedback.thumbs(ws)] == [
        ("Yes.", "run-a", False), ("It closes at 22:00.", "run-a", True), ("Yes.", "run-b", True)]
    feedback.add_thumb(ws, question, "Yes.", None, run_id="run-a", model="right")  # the thumbs-down undone
    assert [(t["answer"], t["run_id"]) for t in feedback.thumbs(ws)] == [("It closes at 22:00.", "run-a"),
                                                                          ("Yes.", "run-b")]
    rows, counts = collect(ws, "kto")
    assert counts["thumbs"] == 2 and sorted(r["label"] for r in rows) == [True, True]


def test_feedback_export_cli(ws, studio_home):
    def studio(*args):
        return subprocess.run([sys.executable, "-m", "studio", "--json", *args], capture_output=True, text=True,
                              env={**__import__("os").environ, "STUDIO_HOME": str(studio_home)}, timeout=120)

    _feedback(ws, 3)
    refused = studio("feedback", "export")
    assert refused.returncode == 2 and "Too little feedback" in refused.stderr
    done = studio("feedback", "export", "--kind", "kto")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["counts"] == {"ab_votes": 0, "corrections": 6, "thumbs": 3} and out["dataset"].startswith("ds-")


def test_blind_ab_votes_become_pairs_winner_chosen(ws):
    """Votes cast through the Evaluate tab's core calls (ab_pairs, ab_vote) on a stored evaluation: whichever
    side the hidden model was shown on, the answer voted for is chosen; ties are left out."""
    from conftest import save_qa_dataset

    from studio.evaluation.ab import ab_pairs, ab_vote
    from studio.evaluation.golden import GoldenItem
    from studio.evaluation.runner import _store
    from studio.training import submit
    from studio.training.presets import build_config

    run = submit.submit(ws, build_config("demo-tiny", save_qa_dataset(ws).id, "quick-test"), preset="quick-test")
    golden = [GoldenItem(question=f"Question {i}?", reference=f"Reference {i}.") for i in range(10)]
    items = [{"question": g.question, "reference": g.reference, "context": None,
              "base": {"answer": f"Base answer {i}."}, "tuned": {"answer": f"Tuned answer {i}."}}
             for i, g in enumerate(golden)]
    evaluation = _store(ws, run.id, golden, "faq", "golden", items, {"questions": 10})
    for n, pair in enumerate(ab_pairs(ws, evaluation.id)):
        vote = "tie" if n == 0 else ("a" if pair["a_is"] == "tuned" else "b")
        ab_vote(ws, evaluation.id, n, vote)
    rows, counts = collect(ws, "preference")
    assert counts == {"ab_votes": 9, "corrections": 0, "thumbs": 0}
    for row in rows:
        number = row["prompt"][-1]["content"].split()[1].rstrip("?")
        assert row["prompt"] == [{"role": "user", "content": f"Question {number}?"}]
        assert row["chosen"][0]["content"] == f"Tuned answer {number}."
        assert row["rejected"][0]["content"] == f"Base answer {number}."
    version, info = export(ws, "preference")
    assert version.rows_train == 9 and "9 from blind A/B votes" in info["text"]
