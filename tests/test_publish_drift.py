"""Verification against what the expert approved: the golden set itself (asked with the dataset's system
prompt), the replies of the model used in Chat, and the drift between them and the published model: token
agreement, the first differing position, and the pass rule per precision (exact for the same weights, a
stated tolerance across precisions). The planted differences run against a scripted TGI-shaped server; the
golden set runs the real export and a real local endpoint."""

from __future__ import annotations

import json

import pytest
from test_publish_helpers import register_run
from test_publish_verify import STUDIO, Scripted, reference

from studio.publishing.drift import DRIFT_MIN_AGREEMENT, drift_report, token_drift
from studio.publishing.verify import Served, format_verification, verify


def test_token_drift_finds_the_first_difference_and_the_agreement():
    assert token_drift([1, 2, 3, 4], [1, 2, 3, 4]) == {"agreement": 1.0, "first_difference": None,
                                                       "reference_tokens": 4, "served_tokens": 4}
    planted = token_drift([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 9, 5, 6, 7, 8])
    assert planted["first_difference"] == 3 and planted["agreement"] == pytest.approx(7 / 8)
    longer = token_drift([1, 2, 3], [1, 2, 3, 4, 5])  # one reply goes on where the other stopped
    assert longer["first_difference"] == 3 and longer["agreement"] == pytest.approx(6 / 8)
    assert token_drift([1, 2], [7, 8])["agreement"] == 0.0
    report = drift_report([([1, 2, 3, 4], [1, 2, 3, 4], True), ([1, 2, 3, 4, 5, 6, 7, 8],
                                                                 [1, 2, 3, 9, 5, 6, 7, 8], True)])
    assert report["identical"] == 1 and report["first_difference"] == 3 and report["within_tolerance"]
    assert not drift_report([([1, 2, 3, 4], [1, 2, 3, 4], False)])["within_tolerance"]  # a reply must end
    assert not drift_report([([1, 2, 3, 4], [5, 6, 7, 8], True)])["within_tolerance"]


def _across(chat_text: str, *questions) -> dict:
    """A reference recorded on a GPU: Chat was the 4-bit base + adapter, the export is bf16."""
    ref = reference(*questions)
    ref.update(dtype="bfloat16", chat_precision="nf4-4bit+bfloat16", eos_ids=[2])
    for p in ref["prompts"]:
        p["chat"] = {"text": chat_text, "finish": "eos", "tokens": 8}
    return ref


@pytest.fixture
def server():
    made = Scripted({"Where do refunds go?": {"chat": (STUDIO, "stop")}})
    yield made
    made.server.shutdown()


def test_same_weights_are_held_to_exact_replies_and_show_no_drift(server):
    ref = reference("Where do refunds go?")
    ref["dtype"] = ref["chat_precision"] = "float32"  # the CPU: Chat and the export are one float model
    for p in ref["prompts"]:
        p["chat"] = dict(p["tuned"])
    result = verify(Served(url=server.url), ref)
    assert result["verdict"] == "passed" and result["same_weights"] and result["rule"].startswith("exact")
    assert result["drift"]["identical"] == 1 and result["drift"]["items"][0]["first_difference"] is None
    summary = result["summary"]  # what was checked, and what not: the serving, not the answers' quality
    assert "The served model answers exactly as the studio's model does: all 1 replies are the same" in summary
    assert "not the answers' quality: the Evaluate tab scores the answers against yours" in summary
    # what the drift compared: the studio's own model's replies to these prompts, not the expert's chats
    assert ("Drift from the Chat model: none — all 1 replies are word for word the replies the studio's own "
            "model (float32, as the Chat tab runs it) gives to these same prompts, recorded at export (not the "
            "replies in your Chat conversations).") in summary


def test_a_pass_with_nothing_differing_shows_no_empty_why_column(server):
    """An empty "Why" column is squeezed until its header breaks ("Wh y"): it is left out when nothing differs."""
    from studio.publishing import deployments
    from studio.ui.publish_tab import verification_markdown

    ref = reference("Where do refunds go?")
    ref["dtype"] = ref["chat_precision"] = "float32"
    for p in ref["prompts"]:
        p["chat"] = dict(p["tuned"])
    dep = deployments.Deployment(id="dep-x", run_id="r", target="local", slot="local:x", status="healthy",
                                 created_at="t", verification=verify(Served(url=server.url), ref))
    md = verification_markdown(dep)
    assert "✅ **healthy** · verification **passed**" in md and "not the answers' quality" in md
    assert "| | Question | Studio model | Published model | Drift from the Chat model |" in md
    assert "Why" not in md and md.rstrip().endswith("| none |")


def test_across_precisions_a_small_drift_passes_and_is_reported(server):
    # Chat (4-bit) said one word differently; the served 16-bit model says exactly what the export's weights say
    result = verify(Served(url=server.url), _across("Refunds go to your bank card.", "Where do refunds go?"))
    assert result["items"][0]["match"] and not result["same_weights"]
    assert result["rule"].startswith("across precisions") and f"{DRIFT_MIN_AGREEMENT:.0%}" in result["rule"]
    drift = result["drift"]
    assert drift["unit"] == "words" and drift["identical"] == 0 and drift["first_difference"] == 4
    assert DRIFT_MIN_AGREEMENT <= drift["mean_agreement"] < 1 and result["verdict"] == "passed"
    assert "earliest difference at word 4" in result["summary"]  # no tokenizer given: words
    assert "bank card" in result["items"][0]["chat"]


def test_across_precisions_a_large_drift_is_not_a_pass(server):
    result = verify(Served(url=server.url), _across("Please ask the shop about that.", "Where do refunds go?"))
    assert result["items"][0]["match"]  # served as the export's weights say: nothing is broken...
    assert result["verdict"] == "passed_with_differences" and result["healthy"]  # ...but not what was approved
    assert "Beyond the tolerance across precisions" in result["summary"]
    assert "passed with differences" in format_verification(result)


def test_the_publish_tab_shows_the_rule_the_golden_set_and_the_drift(server):
    from studio.publishing import deployments
    from studio.ui.publish_tab import verification_markdown

    ref = _across("Refunds go to your bank card.", "Where do refunds go?")
    ref["prompts_from"] = {"kind": "golden", "name": "support golden set", "evaluation": "ev-1", "asked": 1,
                           "of": 4, "system_prompt": "Be brief."}
    result = verify(Served(url=server.url), ref)
    dep = deployments.Deployment(id="dep-x", run_id="r", target="local", slot="local:x", status="healthy",
                                 created_at="t", verification=result)
    md = verification_markdown(dep)
    assert "golden set **support golden set**" in md and "with the dataset's system prompt" in md
    assert "Pass rule — across precisions (Chat: nf4-4bit+bfloat16, export: bfloat16)" in md
    assert "| Drift from the Chat model |" in md and "| 91% the same; differs from token 4 |" in md
    assert "identical to the replies the model as the Chat tab runs it (nf4-4bit+bfloat16) gives" in md


@pytest.mark.slow
def test_the_golden_set_itself_is_verified_with_the_system_prompt(ws, trained_run):
    """A run evaluated on a golden set: the export asks those questions (not validation rows) with the
    dataset's system prompt, keeps the set in reference.json, and the verification reports it and the drift."""
    import datasets

    from studio.data.store import save_version
    from studio.evaluation.golden import GoldenItem
    from studio.evaluation.runner import _store
    from studio.publishing import pipeline
    from studio.publishing.source import finished_run
    from studio.serving import endpoints

    system = "You answer for the support team."
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [("Where is my order?", "Follow your parcel."), ("When do orders ship?", "Soon.")]]
    version, _ = save_version(ws, content_hash="g" * 64, name="faq", train=datasets.Dataset.from_list(rows),
                              val=datasets.Dataset.from_list(rows[:1]), base_model="demo-tiny", template="model",
                              system_prompt=system)
    run_id = register_run(ws, trained_run.adapter_dir, dataset_id=version.id)
    golden = [GoldenItem(question="How long do refunds take?", reference="Five to seven business days."),
              GoldenItem(question="Can I return a damaged item?", reference="Yes, within thirty days.")]
    stored = _store(ws, run_id, golden, "support golden set", "golden", [], {"questions": 2})

    export = pipeline.ensure_export(ws, finished_run(ws, run_id), "adapter")
    recorded = export.reference()
    asked = [p["messages"] for p in recorded["prompts"]]
    assert asked == [[{"role": "system", "content": system}, {"role": "user", "content": g.question}] for g in golden]
    assert [p["expected"] for p in recorded["prompts"]] == [g.reference for g in golden]
    origin = recorded["prompts_from"]
    assert origin["kind"] == "golden" and origin["evaluation"] == stored.id and origin["name"] == "support golden set"
    assert [i["question"] for i in origin["items"]] == [g.question for g in golden]
    assert all(p["chat"]["ids"] for p in recorded["prompts"]) and recorded["chat_precision"]

    try:
        dep = pipeline.publish(ws, run_id, "local", {"name": "golden"})
    finally:
        for ep in endpoints.list_endpoints(ws, include_stopped=False):
            endpoints.stop_endpoint(ws, ep.id)
    v = dep.verification
    assert v["prompts_from"]["kind"] == "golden" and v["total"] == 2 and v["drift"]["prompts"] == 2
    assert v["drift"]["unit"] == "tokens"
    if v["same_weights"]:  # the CPU (and a LoRA run on a GPU): the replies chatted with, exactly
        assert v["verdict"] == "passed" and v["drift"]["identical"] == 2, v
    else:  # a QLoRA run on a GPU: the 4-bit Chat replies against the served export, within the stated tolerance
        assert v["rule"].startswith("across precisions") and v["verdict"] in ("passed", "passed_with_differences")
    json.dumps(v)  # stored as JSON with the deployment
