"""Evaluation: is the tuned model better than the base model, on the expert's own questions?

Both models answer a golden set (question, reference answer) or the run's held-out split through
the run's endpoint (greedy, so the result is repeatable); each answer is scored against the
reference (exact match, token F1, ROUGE-L), and held-out loss / perplexity come from the endpoint's
prompt log-probabilities (TGI's `decoder_input_details`) on the run's val split. Results are kept
in the evaluations table and evaluations/<id>/ so runs can be compared on the same golden set; a
blind A/B mode lets the expert vote between the two answers without knowing which is which.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from studio.core import access
from studio.core.db import now
from studio.core.errors import Conflict, InvalidInput, NotFound
from studio.core.files import new_folder
from studio.evaluation.golden import GoldenItem, golden_hash, heldout_items, seen_in_training
from studio.evaluation.scores import SCORES, closer_counts, score

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

MODELS = ("base", "tuned")
PARALLEL_REQUESTS = 4  # the endpoint batches them: several at once finish sooner than one by one

Progress = Callable[[float, str], None]


# ---------------------------------------------------------------- evaluations


class Evaluation(BaseModel):
    id: str
    run_id: str
    golden_set: str
    golden_hash: str
    kind: str  # golden | heldout
    created_at: str
    summary: dict[str, Any]
    path: str

    @classmethod
    def from_row(cls, row: dict) -> Evaluation:
        row = dict(row)
        row["summary"] = json.loads(row.pop("summary_json") or "{}")
        return cls.model_validate({k: v for k, v in row.items() if v is not None})

    @property
    def folder(self) -> Path:
        return Path(self.path)

    def results(self) -> list[dict]:
        return json.loads((self.folder / "results.json").read_text())["items"]


def evaluate_run(
    ws: Workspace,
    run_id: str,
    golden: list[GoldenItem] | None = None,
    *,
    golden_name: str = "",
    max_new_tokens: int = 128,
    heldout_rows: int = 50,
    progress: Progress | None = None,
) -> Evaluation:
    """Score the run's adapter against its base model and store the result.

    golden=None evaluates on the run's held-out split. Uses the run's live endpoint if there is one,
    else starts one and stops it afterwards."""
    access.require(ws, "evaluate")
    from studio.serving import endpoints, launch
    from studio.training import runs

    progress = progress or (lambda fraction, text: None)
    run = runs.get_run(ws, run_id)
    if run.status not in ("succeeded", "cancelled"):
        raise Conflict(f"Run '{run_id}' has not finished (status: {run.status}).",
                       "Evaluate it once it has succeeded.")
    if not 1 <= max_new_tokens <= 4096:
        raise InvalidInput(f"Max new tokens {max_new_tokens} is out of range.", "Use 1 to 4096.")
    if heldout_rows < 1:
        raise InvalidInput(f"Held-out rows {heldout_rows} is out of range.", "Use 1 or more (default 50).")
    system_prompt = _system_prompt(ws, run.dataset_id)
    kind = "golden" if golden else "heldout"
    if golden is None:
        golden = heldout_items(ws, run.dataset_id, heldout_rows)
        golden_name = f"held-out split of {run.dataset_id}"
        if not golden:
            raise InvalidInput(f"Dataset {run.dataset_id} has no held-out rows to evaluate on.",
                               "Upload a golden set (question, reference answer) instead.")
    progress(0.02, "starting the endpoint")
    already = endpoints.find_endpoint_for_run(ws, run_id)
    endpoint = launch.start_for_run(ws, run_id)
    try:
        items = _answer_all(endpoint.url, {"base": endpoint.base_name, "tuned": run_id}, golden, system_prompt,
                            max_new_tokens, progress)
        progress(0.85, "held-out loss")
        loss = _heldout_loss(ws, endpoint.url, run, heldout_rows)
    finally:
        if already is None:
            endpoints.stop_endpoint(ws, endpoint.id)
    summary = _summarize(items, loss, max_new_tokens)
    if kind == "golden":  # held-out rows are kept apart from training by the split itself
        seen = seen_in_training(ws, run.dataset_id, golden)
        for index in seen:
            items[index]["in_training"] = True
        summary["seen_in_training"] = len(seen)
    evaluation = _store(ws, run_id, golden, golden_name or "golden set", kind, items, summary)
    progress(1.0, "done")
    return evaluation


def _system_prompt(ws: Workspace, dataset_id: str) -> str:
    from studio.data.store import get_version

    try:
        return get_version(ws, dataset_id).system_prompt or ""
    except NotFound:
        return ""


def _answer_all(url: str, models: dict[str, str], golden: list[GoldenItem], system_prompt: str,
                max_new_tokens: int, progress: Progress) -> list[dict]:
    from studio.serving.chat import Settings, chat_body
    from studio.serving.client import complete_chat

    settings = Settings(temperature=0.0, max_new_tokens=max_new_tokens)
    tasks = []
    for index, item in enumerate(golden):
        context = item.context or ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages = [*context, {"role": "user", "content": item.question}]
        for which, model in models.items():
            tasks.append((index, which, chat_body(model, messages, settings, stream=False)))
    answers: dict[tuple[int, str], str] = {}
    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        futures = {pool.submit(complete_chat, url, body, priority="batch"): (index, which)
                   for index, which, body in tasks}
        for done, future in enumerate(as_completed(futures), 1):
            answers[futures[future]] = future.result()
            progress(0.05 + 0.8 * done / len(futures), f"answered {done} of {len(futures)}")
    return [
        {"question": item.question, "reference": item.reference, "context": item.context,
         **{which: {"answer": answers[(i, which)], **score(answers[(i, which)], item.reference)} for which in models}}
        for i, item in enumerate(golden)
    ]


def _heldout_loss(ws: Workspace, url: str, run, limit: int) -> dict[str, Any]:
    """Mean loss per answer token (and perplexity) of each model on the run's val split."""
    from huggingface_hub.errors import ValidationError

    from studio.data.store import load_split
    from studio.serving.adapters import run_adapter_dir
    from studio.serving.client import client

    rows = load_split(ws, run.dataset_id, "val")
    if len(rows) == 0:
        return {"rows": 0, "tokens": 0}
    from studio.core.imports import heavy_imports

    with heavy_imports():
        from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(run_adapter_dir(ws, run.id))
    inference = client(url, priority="batch")  # admitted after chat's requests (the endpoint batches them)
    totals = {which: 0.0 for which in MODELS}
    tokens = used = 0
    for row in rows.select(range(min(limit, len(rows)))):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        n_answer = len(tokenizer(full, add_special_tokens=False)["input_ids"]) - n_prompt
        if not full.startswith(prompt) or n_answer <= 0:
            continue
        try:
            nll = {}
            for which, adapter in (("base", None), ("tuned", run.id)):
                out = inference.text_generation(full, max_new_tokens=1, details=True, decoder_input_details=True,
                                                adapter_id=adapter)
                answer = out.details.prefill[-n_answer:]  # the answer's tokens are the last ones of the prompt
                nll[which] = -sum(t.logprob for t in answer if t.logprob is not None)
        except ValidationError:  # longer than the endpoint's context: left out of the loss
            continue
        for which in MODELS:
            totals[which] += nll[which]
        tokens += n_answer
        used += 1
    if not tokens:
        return {"rows": 0, "tokens": 0}
    result: dict[str, Any] = {"rows": used, "tokens": tokens}
    for which in MODELS:
        loss = totals[which] / tokens
        result[which] = {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 2)}
    return result


def _summarize(items: list[dict], loss: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"questions": len(items), "max_new_tokens": max_new_tokens,
                               "heldout_rows": loss.get("rows", 0), "heldout_tokens": loss.get("tokens", 0)}
    for which in MODELS:
        summary[which] = {s: round(sum(i[which][s] for i in items) / len(items), 4) for s in SCORES}
        summary[which].update(loss.get(which, {}))
    summary["better_f1"] = closer_counts(items)  # a question both answer badly counts for neither
    return summary


def _store(ws: Workspace, run_id: str, golden: list[GoldenItem], name: str, kind: str, items: list[dict],
           summary: dict) -> Evaluation:
    folder = new_folder(ws.evaluations_dir, "ev")
    eval_id = folder.name
    with open(folder / "golden.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "reference_answer"])
        writer.writerows([[i.question, i.reference] for i in golden])
    (folder / "results.json").write_text(json.dumps({"summary": summary, "items": items}, indent=2,
                                                    ensure_ascii=False))
    evaluation = Evaluation(id=eval_id, run_id=run_id, golden_set=name, golden_hash=golden_hash(golden), kind=kind,
                            created_at=now(), summary=summary, path=str(folder))
    with ws.db() as db:
        db["evaluations"].insert({**evaluation.model_dump(exclude={"summary"}),
                                  "summary_json": json.dumps(summary)})
    return evaluation


def get_evaluation(ws: Workspace, eval_id: str) -> Evaluation:
    with ws.db() as db:
        rows = list(db["evaluations"].rows_where("id = ?", [eval_id]))
    if not rows:
        raise NotFound(f"There is no evaluation '{eval_id}'.", "See `studio eval list` for the evaluations.")
    return Evaluation.from_row(rows[0])


def list_evaluations(ws: Workspace, run_id: str | None = None, golden: str | None = None) -> list[Evaluation]:
    """Newest first; `golden` is a golden-set hash: every evaluation on exactly those questions."""
    clauses, args = [], []
    if run_id:
        clauses.append("run_id = ?")
        args.append(run_id)
    if golden:
        clauses.append("golden_hash = ?")
        args.append(golden)
    with ws.db() as db:
        rows = list(db["evaluations"].rows_where(" and ".join(clauses) or None, args,
                                                 order_by="created_at desc, rowid desc"))
    return [Evaluation.from_row(r) for r in rows]


def compare(ws: Workspace, golden: str) -> list[dict]:
    """One row per evaluation on the same golden set: the tuned model's scores beside the base's."""
    rows = []
    for ev in list_evaluations(ws, golden=golden):
        s = ev.summary
        rows.append({
            "evaluation": ev.id, "run": ev.run_id, "date": ev.created_at, "questions": s.get("questions"),
            "against": (s.get("versus") or {}).get("old") or "base model",
            **{f"tuned {k}": s.get("tuned", {}).get(k) for k in (*SCORES, "loss", "perplexity")},
            **{f"base {k}": s.get("base", {}).get(k) for k in (*SCORES, "loss", "perplexity")},
            "A/B votes for tuned": (s.get("ab") or {}).get("tuned"),
        })
    return rows
