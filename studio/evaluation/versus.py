"""Did it help? A continued run (DPO from an SFT run, say) against the run it started from.

Both runs' adapters are served by one endpoint over their shared base model; each answers the golden set
(greedy, so the answers are repeatable) and is scored against the references as runner.py scores base vs
tuned. The comparison is stored as an evaluation like any other (kind "versus"): in its items and summary
"tuned" is the new run and "base" the run it is compared against (summary["versus"] names both), so the blind
A/B of ab.py works on it unchanged (`studio eval ab EVAL_ID`, the Evaluate tab) and its votes also feed the
next preference export. The win rate counts those blind votes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studio.core import access
from studio.core.errors import Conflict, InvalidInput, NotFound
from studio.evaluation.golden import GoldenItem
from studio.evaluation.runner import (
    Evaluation,
    Progress,
    _answer_all,
    _store,
    _summarize,
    _system_prompt,
    get_evaluation,
    list_evaluations,
)
from studio.evaluation.scores import CLOSE_F1

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.training.runs import Run

KIND = "versus"


def parent_of(ws: Workspace, run_id: str) -> str:
    """The run `run_id` was continued from (`studio train --from`), from its manifest."""
    from studio.training.runs import get_run

    parent = (get_run(ws, run_id).folder.read_manifest().get("parent") or {}).get("run_id")
    if not parent:
        raise InvalidInput(
            f"Run '{run_id}' started from the base model, not from another run, so it has no run to be compared with.",
            "Name the run to compare it with (--against RUN), or compare it with its base model: "
            f"studio eval run {run_id}.",
        )
    return parent


def _finished(ws: Workspace, run_id: str, role: str) -> Run:
    from studio.training.runs import get_run

    try:
        run = get_run(ws, run_id)
    except NotFound as exc:
        if role == "old":
            raise NotFound(f"There is no run '{run_id}' to compare with (a wrong id, or a deleted run).",
                           "Compare with another run of the same base model: --against RUN.") from exc
        raise
    if not run.folder.has_adapter():
        raise Conflict(f"Run '{run_id}' has no adapter to answer with (status: {run.status}).",
                       "Compare runs that succeeded (or were cancelled after saving an adapter).")
    return run


def evaluate_versus(
    ws: Workspace,
    run_id: str,
    golden: list[GoldenItem],
    *,
    against: str | None = None,
    golden_name: str = "",
    max_new_tokens: int = 128,
    progress: Progress | None = None,
) -> Evaluation:
    """Both runs answer `golden`; the scores are stored side by side as a "versus" evaluation of `run_id`.

    against=None compares with the run `run_id` was continued from. Uses a live endpoint that already serves
    both adapters, else starts one and stops it afterwards."""
    from studio.serving import endpoints, launch

    access.require(ws, "evaluate")
    progress = progress or (lambda fraction, text: None)
    if not golden:
        raise InvalidInput("There are no golden questions to compare the two runs on.",
                           "Give a golden set: a CSV with question and reference_answer columns (--golden FILE).")
    if not 1 <= max_new_tokens <= 4096:
        raise InvalidInput(f"Max new tokens {max_new_tokens} is out of range.", "Use 1 to 4096.")
    new = _finished(ws, run_id, "new")
    old = _finished(ws, against or parent_of(ws, run_id), "old")
    if old.id == new.id:
        raise InvalidInput(f"Run '{run_id}' cannot be compared with itself.", "Pick another run: --against RUN.")
    if old.base_model != new.base_model:
        raise InvalidInput(
            f"Run '{new.id}' is an adapter for '{new.base_model}' and run '{old.id}' one for '{old.base_model}'.",
            "Compare runs of the same base model (one endpoint serves both adapters).",
        )
    system_prompt = _system_prompt(ws, new.dataset_id) or _system_prompt(ws, old.dataset_id)
    progress(0.02, "starting the endpoint")
    endpoint, started = _endpoint_for(ws, new, old, launch, endpoints)
    try:
        items = _answer_all(endpoint.url, {"base": old.id, "tuned": new.id}, golden, system_prompt, max_new_tokens,
                            progress)
    finally:
        if started:
            endpoints.stop_endpoint(ws, endpoint.id)
    summary = _summarize(items, {}, max_new_tokens)
    summary[KIND] = {"new": new.id, "new_name": new.name, "new_objective": new.config.get("objective", "sft"),
                     "old": old.id, "old_name": old.name, "old_objective": old.config.get("objective", "sft")}
    evaluation = _store(ws, new.id, golden, golden_name or "golden set", KIND, items, summary)
    progress(1.0, "done")
    return evaluation


def _endpoint_for(ws: Workspace, new: Run, old: Run, launch, endpoints):
    """A ready local endpoint serving both adapters under their run ids: (endpoint, started here)."""
    for endpoint in endpoints.list_endpoints(ws, include_stopped=False):
        if endpoint.kind == "local" and endpoint.status == "ready" and {new.id, old.id} <= set(endpoint.adapters):
            return endpoint, False
    method = new.config.get("method")
    quantize = "4bit" if method == "qlora" and launch._cuda_available() else "none"
    endpoint = launch.start_endpoint(ws, new.base_model, {old.id: old.id, new.id: new.id},
                                     name=f"{new.id} vs {old.id}", quantize=quantize)
    return endpoint, True


def list_versus(ws: Workspace, run_id: str | None = None) -> list[Evaluation]:
    return [e for e in list_evaluations(ws, run_id=run_id) if e.kind == KIND]


def get_versus(ws: Workspace, eval_id: str) -> Evaluation:
    evaluation = get_evaluation(ws, eval_id)
    if evaluation.kind != KIND:
        raise InvalidInput(f"Evaluation '{eval_id}' compares run {evaluation.run_id} with its base model, not with "
                           "another run.", "Open it with `studio eval show`, or pick a run-versus-run evaluation.")
    return evaluation


def win_rate(summary: dict[str, Any]) -> dict[str, Any]:
    """The blind votes as the new run's win rate: {"new", "old", "ties", "votes", "pairs", "rate", "text"}."""
    ab = summary.get("ab") or {}
    new, old, ties = ab.get("tuned", 0), ab.get("base", 0), ab.get("tie", 0)
    votes = ab.get("voted", new + old + ties)
    pairs = ab.get("total", summary.get("questions", 0))
    rate = round(new / votes, 3) if votes else None
    if votes:
        text = (f"new run preferred in {new} of {votes} votes, {ties} tie{'' if ties == 1 else 's'} "
                f"(the run it started from in {old}; win rate {rate:.0%})")
    else:
        text = "no blind votes yet"
    if votes < pairs:
        text += f"; {pairs - votes} of {pairs} pairs still to vote on"
    return {"new": new, "old": old, "ties": ties, "votes": votes, "pairs": pairs, "rate": rate, "text": text}


def versus_text(evaluation: Evaluation) -> str:
    """The comparison in plain text: the two runs, their scores side by side, the closer answers, the win rate."""
    s = evaluation.summary
    names = s.get(KIND, {})
    lines = [f"{evaluation.id}: run {names.get('new')} ({names.get('new_objective', 'sft')}) against run "
             f"{names.get('old')} ({names.get('old_objective', 'sft')}) on {evaluation.golden_set} "
             f"({s.get('questions')} questions; golden set {evaluation.golden_hash})",
             "run                         exact  token-F1  ROUGE-L"]
    for which, label in (("base", f"old {names.get('old')}"), ("tuned", f"new {names.get('new')}")):
        m = s.get(which, {})
        lines.append(f"{label:<27} {m.get('exact_match', 0):<6.2f} {m.get('token_f1', 0):<9.3f} "
                     f"{m.get('rouge_l', 0):.3f}")
    better = s.get("better_f1", {})
    lines.append(f"closer to the reference (token F1): new run on {better.get('tuned', 0)}, old run on "
                 f"{better.get('base', 0)}, tie on {better.get('tie', 0)}, neither close (F1 < {CLOSE_F1}) on "
                 f"{better.get('neither', 0)} of {s.get('questions')} questions")
    lines.append(f"blind A/B: {win_rate(s)['text']} (vote: studio eval ab {evaluation.id})")
    return "\n".join(lines)
