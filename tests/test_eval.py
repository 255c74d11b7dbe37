"""Evaluation: the scores on known examples, golden sets from files and tables, and a whole evaluation
of the session's trained run (stored, comparable, blind A/B votes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from studio.core.errors import InvalidInput
from studio.evaluation.ab import ab_pairs, ab_tally, ab_vote
from studio.evaluation.golden import golden_from_rows, golden_hash, read_golden
from studio.evaluation.runner import compare, evaluate_run, get_evaluation, list_evaluations
from studio.evaluation.scores import (
    CLOSE_F1,
    SCORES,
    closer,
    closer_counts,
    closer_sentence,
    exact_match,
    rouge_l,
    token_f1,
)

SAMPLE_GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "samples" / "support_faq_golden.csv"


@pytest.mark.parametrize(("prediction", "reference", "em", "f1", "rouge"), [
    ("The answer is 42.", "answer is 42", 1.0, 1.0, 1.0),  # case, punctuation and articles do not count
    ("the cat sat on the mat", "the cat is on the mat", 0.0, 0.75, 0.75),  # 3 of 4 words, in order
    ("police killed the gunman", "police kill the gunman", 0.0, 2 / 3, 2 / 3),
    ("the gunman kill police", "police killed the gunman", 0.0, 2 / 3, 1 / 3),  # same words, wrong order
    ("yes yes no", "yes no no", 0.0, 2 / 3, 2 / 3),  # repeated words are counted, not set-matched
    ("", "something", 0.0, 0.0, 0.0),
    ("completely different", "nothing alike here", 0.0, 0.0, 0.0),
])
def test_scores_on_known_examples(prediction, reference, em, f1, rouge):
    assert exact_match(prediction, reference) == em
    assert token_f1(prediction, reference) == pytest.approx(f1)
    assert rouge_l(prediction, reference) == pytest.approx(rouge)


def test_rouge_l_uses_the_longest_common_subsequence():
    # LCS of "a b c d e f" and "a x c y e z" (no articles here) is "c e" plus nothing else... check by hand:
    # normalize drops "a"; pred = b c d e f, ref = x c y e z -> LCS = c e (2): P = 2/5, R = 2/5
    assert rouge_l("a b c d e f", "a x c y e z") == pytest.approx(0.4)


def test_gibberish_on_both_sides_is_no_win_for_either_model():
    """The newcomer's tiny model: base answers of F1 0.031 and 0.03 against the tuned model's 0 are not base
    wins; a question both answer below CLOSE_F1 counts as "neither close", and the summary says so."""
    from studio.evaluation.runner import Evaluation
    from studio.ui.evaluate_tab import summary_markdown

    assert CLOSE_F1 == 0.1
    assert closer(0.0, 0.031) == "neither" and closer(0.12, 0.03) == "tuned" and closer(0.05, 0.2) == "base"
    assert closer(0.5, 0.5) == "tie" and closer(0.0, 0.0) == "neither"

    def item(tuned, base):
        return {"tuned": {"token_f1": tuned}, "base": {"token_f1": base}}

    items = [item(0.4, 0.0), item(0.3, 0.1), item(0.9, 0.2), item(0.0, 0.031), item(0.0, 0.03)]
    better = closer_counts(items)
    assert better == {"tuned": 3, "base": 0, "tie": 0, "neither": 2} and sum(better.values()) == len(items)
    sentence = closer_sentence(better, "the tuned model", "the base model")
    assert sentence == ("The tuned model answered closer to your answer on 3 questions, the base model on 0, "
                        "equally on 0; on 2 neither answer was close to yours (token F1 below 0.1 for both).")
    # a summary stored before "neither" existed reads as it did
    assert closer_sentence({"tuned": 1, "base": 2, "tie": 0}, "the new run", "the old run").endswith("equally on 0.")
    ev = Evaluation(id="ev-1", run_id="r", golden_set="faq", golden_hash="h", kind="golden", created_at="t",
                    summary={"questions": 5, "better_f1": better}, path=".")
    md = summary_markdown(ev)
    assert "answered closer to your answer on **3** questions, the base model on **0**" in md
    assert "on **2** neither answer was close to yours" in md


def test_every_table_header_word_fits_its_column_at_1366_px():
    """The "All runs" table at laptop width: each column holds its header's longest word ("A/B tun" was cut)."""
    from studio.ui.evaluate_tab import COMPARE_COLUMNS, COMPARE_WIDTHS, RESULT_WIDTHS

    def fits(headers, widths):
        assert len(headers) == len(widths) and sum(int(w[:-1]) for w in widths) == 100
        table_px = 1300  # a 1366 px window less the page's margins
        return [h for h, w in zip(headers, widths, strict=True)
                if 8 * max(len(word) for word in h.split()) + 16 > int(w[:-1]) * table_px / 100]

    assert fits(list(COMPARE_COLUMNS.values()), COMPARE_WIDTHS) == []
    results = ["question", "your answer", "base answer", "base F1", "tuned answer", "tuned F1", "tuned ROUGE-L",
               "tuned exact"]
    assert fits(results, RESULT_WIDTHS) == []
    assert fits(["n", "A/B tuned"], ["97%", "3%"]) == ["A/B tuned"]  # the check catches the old width


def test_golden_set_from_the_sample_file_and_from_a_table(tmp_path):
    items = read_golden(SAMPLE_GOLDEN)
    assert len(items) == 8 and items[0].question == "How do I reset my password?"
    assert items[0].reference.startswith("Open the sign-in page")
    table = [["What is BP?", "Blood pressure."], ["", ""], ["Refund time?", "Five days."]]
    assert [i.question for i in golden_from_rows(table)] == ["What is BP?", "Refund time?"]
    jsonl = tmp_path / "golden.jsonl"
    jsonl.write_text(json.dumps({"prompt": "Q1", "answer": "A1"}) + "\n")
    assert read_golden(jsonl)[0].reference == "A1"
    assert golden_hash(items) == golden_hash(read_golden(SAMPLE_GOLDEN))


def test_bad_golden_sets_say_what_to_fix(tmp_path):
    with pytest.raises(InvalidInput, match="row 2: the reference answer is empty"):
        golden_from_rows([["Q1", "A1"], ["Q2", ""]])
    with pytest.raises(InvalidInput, match="has no questions"):
        golden_from_rows([["", ""]])
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("text,label\nhello,greeting\n")
    with pytest.raises(InvalidInput, match="needs a question column") as exc:
        read_golden(wrong)
    assert "text, label" in str(exc.value)


def test_ab_tally_counts_votes_for_the_hidden_model():
    pairs = [{"a_is": "tuned", "vote": "a"}, {"a_is": "base", "vote": "b"}, {"a_is": "base", "vote": "a"},
             {"a_is": "tuned", "vote": "tie"}, {"a_is": "tuned", "vote": None}]
    assert ab_tally(pairs) == {"tuned": 2, "base": 1, "tie": 1, "voted": 4, "total": 5}


@pytest.fixture(scope="module")
def run_endpoint(trained_run):
    """One endpoint for the module: evaluate_run uses a live endpoint of the run instead of starting one."""
    from studio.serving import endpoints, launch

    ep = launch.start_for_run(trained_run.ws, trained_run.run_id)
    yield ep
    endpoints.stop_endpoint(trained_run.ws, ep.id)


@pytest.mark.slow
def test_evaluate_a_trained_run_store_compare_and_vote(trained_run, run_endpoint):
    ws, run_id = trained_run.ws, trained_run.run_id
    golden = read_golden(SAMPLE_GOLDEN)[:4]
    ev = evaluate_run(ws, run_id, golden, golden_name="faq", max_new_tokens=24, heldout_rows=3)
    heldout = evaluate_run(ws, run_id, None, max_new_tokens=24, heldout_rows=3)
    assert ev.kind == "golden" and ev.summary["questions"] == 4 and heldout.kind == "heldout"
    for which in ("base", "tuned"):
        assert set(SCORES) <= set(ev.summary[which])
        assert all(0 <= ev.summary[which][s] <= 1 for s in SCORES)
    # training lowered the loss of the answers it learned (the val rows are among the trained ones)
    assert ev.summary["tuned"]["loss"] < ev.summary["base"]["loss"]
    assert ev.summary["tuned"]["perplexity"] < ev.summary["base"]["perplexity"]
    items = ev.results()
    assert [i["question"] for i in items] == [g.question for g in golden]
    assert items[0]["tuned"]["answer"] != items[0]["base"]["answer"]
    item = items[0]
    assert item["tuned"]["token_f1"] == pytest.approx(token_f1(item["tuned"]["answer"], item["reference"]))
    # stored with the run, found by golden set, compared across runs
    assert (Path(ev.path) / "golden.csv").exists()
    assert [e.id for e in list_evaluations(ws, golden=ev.golden_hash)] == [ev.id]
    assert compare(ws, ev.golden_hash)[0]["tuned token_f1"] == ev.summary["tuned"]["token_f1"]
    # blind A/B: shuffled, stable, the tally lands in the stored summary
    pairs = ab_pairs(ws, ev.id)
    assert sorted(p["item"] for p in pairs) == [0, 1, 2, 3] and ab_pairs(ws, ev.id) == pairs
    for n, pair in enumerate(pairs):
        ab_vote(ws, ev.id, n, "a" if pair["a_is"] == "tuned" else "tie")
    tally = get_evaluation(ws, ev.id).summary["ab"]
    tuned_first = sum(p["a_is"] == "tuned" for p in pairs)
    assert tally == {"tuned": tuned_first, "base": 0, "tie": 4 - tuned_first, "voted": 4, "total": 4}
    # the CLI shows the same evaluation
    out = subprocess.run([sys.executable, "-m", "studio", "eval", "show", ev.id, "--home", str(ws.home)],
                         capture_output=True, text=True, check=True)
    assert golden[0].question in out.stdout and "blind votes" in out.stdout


@pytest.mark.slow
def test_evaluate_tab_through_gradio_client(trained_run, run_endpoint):
    from conftest import free_port
    from gradio_client import Client

    from studio.ui.app import build_app
    from studio.ui.evaluate_tab import GOLDEN

    app = build_app(trained_run.ws)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        table = client.predict(api_name="/eval_sample")
        assert len(table["data"]) == 8 and table["data"][0][0] == "How do I reset my password?"
        table = {**table, "data": [*table["data"][:2], ["", ""]]}  # two questions and a blank row
        summary, results, compared, past, _ = client.predict(trained_run.run_id, GOLDEN, table, 16, 2,
                                                             api_name="/eval_run")
        assert "Tuned model" in summary and "2 questions" in summary
        # the sample golden set's first question is a training question of the run (its second is not): marked
        assert [row[0] for row in results["data"]] == ["(in training) How do I reset my password?",
                                                       "What is your return policy?"]
        assert len(compared["data"]) >= 1
        question, answer_a, answer_b, progress = client.predict(past["value"], api_name="/eval_ab_start")
        assert "Question 1 of 2" in question and answer_a != answer_b and "0 of 2 voted" in progress
        client.predict(api_name="/eval_ab_vote_a")
        question, _, _, progress = client.predict(api_name="/eval_ab_vote_tie")
        assert "All pairs voted" in question and "2 of 2 voted" in progress
        assert get_evaluation(trained_run.ws, past["value"]).summary["ab"]["voted"] == 2
    finally:
        app.close()


def test_evaluating_an_unknown_run_is_refused(ws):
    from studio.core.errors import NotFound

    with pytest.raises(NotFound, match="no run 'run-nope'"):
        evaluate_run(ws, "run-nope")


def test_golden_questions_that_are_training_rows_are_found_and_said(ws):
    """A golden set made of training questions measures recall, not answering: the evaluation says how many."""
    from conftest import FAQ_PAIRS, save_qa_dataset

    from studio.evaluation.golden import GoldenItem, seen_in_training, seen_sentence

    version = save_qa_dataset(ws)
    first, second = FAQ_PAIRS[0][0], FAQ_PAIRS[1][0]
    golden = [GoldenItem(question="Is there a phone number I can call?", reference="No."),
              GoldenItem(question=f"  {first.upper().rstrip('?')} !", reference="x"),  # case and punctuation aside
              GoldenItem(question=second, reference="y")]
    assert seen_in_training(ws, version.id, golden) == [1, 2]
    assert seen_sentence({"seen_in_training": 2, "questions": 3}).startswith("⚠️ 2 of 3 golden questions are also")
    assert seen_sentence({"seen_in_training": 0, "questions": 3}) == ""
    assert seen_in_training(ws, "ds-gone", golden) == []
