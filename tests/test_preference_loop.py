"""The whole loop on demo-tiny: an SFT run → the expert's feedback through the real Chat/Evaluate core code
(corrections of real replies, thumbs, blind A/B votes) → `studio feedback export --kind preference` → a DPO
run continued from the SFT run → the new run against the old one on the golden set and in blind A/B → the
win rate with its count (`studio eval ab --vote`, `studio eval versus --show`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import adopt_trained_run

from studio.core.errors import InvalidInput
from studio.evaluation.golden import GoldenItem

GOLDEN = [
    ("How do I reset my password?", "Open the sign-in page, choose Forgot password and follow the link in your email."),
    ("Where is my order?", "Follow your parcel with the tracking number in your confirmation email."),
    ("When do orders ship?", "Orders usually ship within two business days."),
    ("How long do refunds take?", "Refunds reach the original payment method within five to seven business days."),
    ("What does BP mean?", "BP means blood pressure."),
    ("What does PRN mean?", "PRN means as needed."),
]
# what the expert writes instead of the model's reply in the Chat tab
CORRECTIONS = [
    ("Can I return a damaged item?", "Yes: send it back within thirty days, free of charge, with its order number."),
    ("Where do refunds go?", "To the card or account you paid with, within seven business days."),
    ("How long is the password link valid?", "Thirty minutes; after that, ask for a new link on the sign-in page."),
    ("Can I change my delivery address?", "Yes, until the parcel ships: write to us with the order number."),
]


def studio(ws, *args):
    done = subprocess.run([sys.executable, "-m", "studio", "--json", *args], capture_output=True, text=True,
                          env={**os.environ, "STUDIO_HOME": str(ws.home)}, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sft_feedback_dpo_from_it_and_did_it_help(ws, trained_run):
    from studio.evaluation import feedback
    from studio.evaluation.ab import ab_pairs, ab_vote
    from studio.evaluation.preference_export import collect
    from studio.evaluation.runner import evaluate_run
    from studio.evaluation.versus import get_versus, list_versus, win_rate
    from studio.serving import chat, endpoints, launch
    from studio.serving.client import complete_chat
    from studio.training import scheduler, submit
    from studio.training.presets import build_config

    timings = {}
    start = time.monotonic()
    sft = adopt_trained_run(trained_run, ws)
    golden = [GoldenItem(question=q, reference=a) for q, a in GOLDEN]

    # --- the expert at work: the Chat tab's corrections and thumbs on the SFT run's real replies
    endpoint = launch.start_for_run(ws, sft)
    try:
        settings = chat.Settings(temperature=0.0, max_new_tokens=24)
        for n, (question, better) in enumerate(CORRECTIONS):
            messages = [{"role": "user", "content": question}]
            reply = complete_chat(endpoint.url, chat.chat_body(sft, messages, settings, stream=False))
            assert reply.strip() and reply.strip() != better
            feedback.add_correction(ws, messages, better, rejected=reply, run_id=sft, model=sft)
            feedback.add_thumb(ws, messages, reply, liked=n % 2 == 0, run_id=sft, model=sft)
        # ... and the Evaluate tab: base vs SFT on the golden set, then a blind vote on every pair
        ev = evaluate_run(ws, sft, golden, golden_name="faq", max_new_tokens=24, heldout_rows=2)
    finally:
        endpoints.stop_endpoint(ws, endpoint.id)
    for n, pair in enumerate(ab_pairs(ws, ev.id)):
        ab_vote(ws, ev.id, n, "a" if pair["a_is"] == "tuned" else "b")  # the expert prefers the tuned answers
    differing = sum(i["base"]["answer"].strip() != i["tuned"]["answer"].strip() for i in ev.results())
    timings["feedback"] = time.monotonic() - start

    # --- feedback → preference dataset, through the CLI
    rows, counts = collect(ws, "preference")
    assert counts == {"ab_votes": differing, "corrections": len(CORRECTIONS), "thumbs": 0}
    for row in rows:
        if row["source"] == "corrections":
            question = row["prompt"][-1]["content"]
            assert row["chosen"][0]["content"] == dict(CORRECTIONS)[question]
    exported = studio(ws, "feedback", "export", "--kind", "preference", "--min", "6")
    assert exported["counts"] == counts and exported["rows"] == len(rows)

    # --- DPO continued from the SFT run
    t = time.monotonic()
    cfg = build_config("demo-tiny", exported["dataset"], "quick-test", {
        "objective": "dpo", "learning_rate": 5e-3, "lr_schedule": "constant", "warmup_ratio": 0.0, "max_steps": 6,
        "eval_every": 0, "save_every": 0, "micro_batch_size": 8})
    dpo = scheduler.wait_for(ws, submit.submit(ws, cfg, preset="quick-test", from_run=sft).id, timeout=600)
    assert dpo.status == "succeeded", f"{dpo.error}\n" + "\n".join(dpo.folder.tail_log(30))
    assert dpo.folder.read_manifest()["parent"]["run_id"] == sft
    timings["dpo"] = time.monotonic() - t

    # --- did it help? In the Evaluate tab: both runs answer the golden set on one endpoint; the run to compare
    # with is found from the lineage (the "Compare with run" list left empty)
    from conftest import free_port
    from gradio_client import Client

    from studio.ui.app import build_app

    app = build_app(ws)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        t = time.monotonic()
        table = {"headers": ["question", "reference answer"], "data": [list(g) for g in GOLDEN]}
        summary, _, compared, past, _ = client.predict(dpo.id, None, table, 24, api_name="/eval_versus")
        timings["versus"] = time.monotonic() - t
        versus = get_versus(ws, past["value"])
        assert "did it help?" in summary and f"Started from: `{sft}` (sft)" in summary
        assert f"New run: `{dpo.id}` (dpo)" in summary and "no blind votes yet" in summary
        assert {row[0] for row in compared["data"]} == {ev.id, versus.id}  # both on the same golden set
        # blind A/B in the tab: the stored pairs say (to the test, not the expert) which side is which
        pairs = ab_pairs(ws, versus.id)
        plan = ["new", "new", "new", "old", "tie", None]  # the last pair is left unvoted
        votes = ["tie" if w == "tie" else ("a" if (p["a_is"] == "tuned") == (w == "new") else "b")
                 for p, w in zip(pairs, plan[:5], strict=False)]
        question, answer_a, answer_b, progress = client.predict(versus.id, api_name="/eval_ab_start")
        assert "Question 1 of 6" in question and (answer_a, answer_b) == (pairs[0]["a"], pairs[0]["b"])
        for vote in votes[:3]:
            question, _, _, progress = client.predict(api_name=f"/eval_ab_vote_{vote}")
        assert "Question 4 of 6" in question and "new run preferred in 3 of 3 votes, 0 ties" in progress
    finally:
        app.close()
    s = versus.summary
    assert versus.kind == "versus" and versus.run_id == dpo.id
    assert s["versus"]["old"] == sft and s["versus"]["new"] == dpo.id and s["versus"]["new_objective"] == "dpo"
    assert s["questions"] == len(GOLDEN) and sum(s["better_f1"].values()) == len(GOLDEN)
    items = versus.results()
    # 6 DPO steps at lr 5e-3 move the adapter far enough to change its greedy answers (here: for the worse)
    assert any(i["base"]["answer"] != i["tuned"]["answer"] for i in items)
    # the old run's answers are the SFT run's answers of the first evaluation (greedy, same adapter)
    assert [i["base"]["answer"] for i in items] == [i["tuned"]["answer"] for i in ev.results()]
    assert not any(e.status in ("starting", "ready") for e in endpoints.list_endpoints(ws))  # stopped after
    assert [e.id for e in list_versus(ws)] == [versus.id]

    # --- blind A/B between the two runs: random order per pair, the votes through `studio eval ab`
    assert sorted(p["item"] for p in pairs) == list(range(len(GOLDEN)))
    assert {p["a_is"] for p in pairs} <= {"tuned", "base"}
    assert all(sorted([p["a"], p["b"]]) == sorted(items[p["item"]][m]["answer"] for m in ("base", "tuned"))
               for p in pairs)
    tally = studio(ws, "eval", "ab", versus.id, "--vote", "4", votes[3])  # the CLI's votes join the same pairs
    assert tally["voted"] == 4
    tally = ab_vote(ws, versus.id, 4, votes[4])
    assert tally == {"tuned": 3, "base": 1, "tie": 1, "voted": 5, "total": 6}
    rate = win_rate(get_versus(ws, versus.id).summary)
    assert rate["new"] == 3 and rate["votes"] == 5 and rate["ties"] == 1 and rate["rate"] == 0.6
    assert rate["text"].startswith("new run preferred in 3 of 5 votes, 1 tie")
    shown = subprocess.run([sys.executable, "-m", "studio", "eval", "versus", "--show", versus.id],
                           capture_output=True, text=True, env={**os.environ, "STUDIO_HOME": str(ws.home)},
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "new run preferred in 3 of 5 votes, 1 tie" in shown.stdout and f"old {sft}" in shown.stdout
    shown = subprocess.run([sys.executable, "-m", "studio", "eval", "show", versus.id], capture_output=True, text=True,
                           env={**os.environ, "STUDIO_HOME": str(ws.home)}, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"1. {GOLDEN[0][0]}" in shown.stdout and "   old   (F1" in shown.stdout and "   new   (F1" in shown.stdout
    from studio.ui.evaluate_tab import summary_markdown

    assert "new run preferred in 3 of 5 votes, 1 tie" in summary_markdown(get_versus(ws, versus.id))
    # the votes between the two runs feed the next export too (a tie or two equal answers say nothing)
    decided = sum(v != "tie" and p["a"].strip() != p["b"].strip() for p, v in zip(pairs, votes, strict=False))
    assert collect(ws, "preference")[1]["ab_votes"] == counts["ab_votes"] + decided
    print(f"\nloop timings (s): {({k: round(v, 1) for k, v in timings.items()})}; feedback {counts}; "
          f"F1 old {s['base']['token_f1']} new {s['tuned']['token_f1']}; {rate['text']}")


def test_versus_refuses_a_run_without_a_parent_and_a_missing_golden_set(ws, trained_run):
    from studio.evaluation.versus import evaluate_versus

    sft = adopt_trained_run(trained_run, ws)
    golden = [GoldenItem(question="Where is my order?", reference="Follow your parcel.")]
    with pytest.raises(InvalidInput, match="started from the base model") as caught:
        evaluate_versus(ws, sft, golden)
    assert f"studio eval run {sft}" in caught.value.fix and "--against" in caught.value.fix
    with pytest.raises(InvalidInput, match="cannot be compared with itself"):
        evaluate_versus(ws, sft, golden, against=sft)
    with pytest.raises(InvalidInput, match="no golden questions"):
        evaluate_versus(ws, sft, [], against=sft)
    golden_csv = ws.home / "golden.csv"
    golden_csv.write_text("question,reference_answer\nWhere is my order?,Follow your parcel.\n", encoding="utf-8")
    refused = subprocess.run([sys.executable, "-m", "studio", "eval", "versus", sft, "--golden", str(golden_csv)],
                             capture_output=True, text=True, env={**os.environ, "STUDIO_HOME": str(ws.home)},
                             timeout=120)
    assert refused.returncode == 2 and "started from the base model" in refused.stderr
    assert f"studio eval run {sft}" in refused.stderr
