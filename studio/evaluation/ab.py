"""Blind A/B: the expert reads the two answers to each question in a random order, not knowing which model
gave which, and votes; the pairs are made once per evaluation (ab.json) and the tally joins its summary."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import TYPE_CHECKING

from studio.core import access
from studio.core.errors import InvalidInput
from studio.evaluation.runner import MODELS, get_evaluation

if TYPE_CHECKING:
    from studio.core.workspace import Workspace


def ab_pairs(ws: Workspace, eval_id: str) -> list[dict]:
    """The evaluation's questions in a shuffled order, each with its two answers in a random order.

    Created once and kept (ab.json), so a vote can be given later and a reload shows the same pairs."""
    evaluation = get_evaluation(ws, eval_id)
    path = evaluation.folder / "ab.json"
    if path.exists():
        return json.loads(path.read_text())
    items = evaluation.results()
    rng = random.Random(eval_id)
    order = list(range(len(items)))
    rng.shuffle(order)
    pairs = []
    for index in order:
        item = items[index]
        first = rng.choice(MODELS)
        second = "base" if first == "tuned" else "tuned"
        pairs.append({"item": index, "question": item["question"], "a": item[first]["answer"],
                      "b": item[second]["answer"], "a_is": first, "vote": None})
    path.write_text(json.dumps(pairs, indent=2, ensure_ascii=False))
    return pairs


def ab_vote(ws: Workspace, eval_id: str, pair: int, choice: str) -> dict[str, int]:
    """Record the expert's vote for pair `pair` ("a", "b" or "tie"); return the tally so far."""
    access.require(ws, "chat.feedback")
    if choice not in ("a", "b", "tie"):
        raise InvalidInput(f"'{choice}' is not a vote.", "Vote a, b or tie.")
    pairs = ab_pairs(ws, eval_id)
    if not 0 <= pair < len(pairs):
        raise InvalidInput(f"There is no pair {pair + 1}; this evaluation has {len(pairs)}.", "Pick one in range.")
    pairs[pair]["vote"] = choice
    evaluation = get_evaluation(ws, eval_id)
    (evaluation.folder / "ab.json").write_text(json.dumps(pairs, indent=2, ensure_ascii=False))
    tally = ab_tally(pairs)
    summary = {**evaluation.summary, "ab": tally}
    with ws.db() as db:
        db["evaluations"].update(eval_id, {"summary_json": json.dumps(summary)})
    return tally


def ab_tally(pairs: list[dict]) -> dict[str, int]:
    tally = Counter()
    for p in pairs:
        if p["vote"] == "tie":
            tally["tie"] += 1
        elif p["vote"] in ("a", "b"):
            tally[p["a_is"] if p["vote"] == "a" else ("base" if p["a_is"] == "tuned" else "tuned")] += 1
    voted = sum(tally.values())
    return {"tuned": tally["tuned"], "base": tally["base"], "tie": tally["tie"], "voted": voted,
            "total": len(pairs)}
