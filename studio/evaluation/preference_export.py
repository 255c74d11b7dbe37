"""The expert's feedback as a preference dataset: what was voted, corrected and rated becomes DPO pairs or KTO rows.

A blind A/B vote gives (winner = chosen, loser = rejected); a correction gives (correction = chosen, the
model's reply = rejected); a thumbs-up/down gives a KTO row (and, for KTO, every pair gives a good and a bad
row). The result is a dataset version like any other (studio.data.kinds), refused when too small to train on.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from studio.core.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.data.store import DatasetVersion

Kind = Literal["preference", "kto"]
MIN_ROWS = 8  # fewer examples than this teach a model nothing but noise
SOURCES = ("ab_votes", "corrections", "thumbs")


def _clean(messages: list[dict]) -> list[dict]:
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def ab_vote_pairs(ws: Workspace) -> list[dict]:
    """Every decided blind A/B vote of every evaluation: the prompt as the models saw it, winner and loser."""
    from studio.evaluation.ab import ab_pairs
    from studio.evaluation.runner import list_evaluations

    pairs = []
    for evaluation in list_evaluations(ws):
        if not (evaluation.folder / "ab.json").exists():
            continue
        items = evaluation.results()
        system = _system_prompt(ws, evaluation.run_id)
        for pair in ab_pairs(ws, evaluation.id):
            if pair.get("vote") not in ("a", "b"):
                continue  # ties and pairs not voted on say nothing about which answer is better
            winner, loser = (pair["a"], pair["b"]) if pair["vote"] == "a" else (pair["b"], pair["a"])
            item = items[pair["item"]]
            context = item.get("context") or ([{"role": "system", "content": system}] if system else [])
            pairs.append({"prompt": _clean([*context, {"role": "user", "content": pair["question"]}]),
                          "chosen": winner, "rejected": loser, "source": "ab_votes",
                          "run_id": evaluation.run_id})
    return pairs


def correction_pairs(ws: Workspace) -> list[dict]:
    """Every chat correction that kept the model's reply: (the expert's answer, the model's answer)."""
    from studio.evaluation.feedback import corrections

    return [{"prompt": _clean(c["messages"]), "chosen": c["corrected"], "rejected": c["rejected"],
             "source": "corrections", "run_id": c.get("run_id")}
            for c in corrections(ws) if str(c.get("rejected") or "").strip()]


def thumb_rows(ws: Workspace) -> list[dict]:
    from studio.evaluation.feedback import thumbs

    return [{"prompt": _clean(t["messages"]), "completion": t["answer"], "label": bool(t["liked"]),
             "source": "thumbs", "run_id": t.get("run_id")} for t in thumbs(ws)]


def _system_prompt(ws: Workspace, run_id: str) -> str:
    from studio.data.store import get_version
    from studio.training.runs import get_run

    try:
        return get_version(ws, get_run(ws, run_id).dataset_id).system_prompt or ""
    except NotFound:
        return ""


def collect(ws: Workspace, kind: Kind) -> tuple[list[dict], dict[str, int]]:
    """The rows an export would hold (deduplicated, chosen != rejected) and how many each source gave."""
    if kind not in ("preference", "kto"):
        raise InvalidInput(f"'{kind}' is not a kind of feedback export.", "Use --kind preference or --kind kto.")
    pairs = [p for p in ab_vote_pairs(ws) + correction_pairs(ws)
             if p["chosen"].strip() and p["rejected"].strip() and p["chosen"].strip() != p["rejected"].strip()]
    if kind == "preference":
        rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"].strip()}],
                 "rejected": [{"role": "assistant", "content": p["rejected"].strip()}], "source": p["source"],
                 "run_id": p["run_id"]} for p in pairs]
    else:
        rows = [{"prompt": t["prompt"], "completion": [{"role": "assistant", "content": t["completion"].strip()}],
                 "label": t["label"], "source": t["source"], "run_id": t["run_id"]} for t in thumb_rows(ws)]
        for p in pairs:  # a pair is also one good and one bad answer
            for answer, label in ((p["chosen"], True), (p["rejected"], False)):
                rows.append({"prompt": p["prompt"], "completion": [{"role": "assistant", "content": answer.strip()}],
                             "label": label, "source": p["source"], "run_id": p["run_id"]})
    seen, unique = set(), []
    for row in rows:
        key = json.dumps({k: v for k, v in row.items() if k not in ("source", "run_id")}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    counts = Counter(r["source"] for r in unique)
    return unique, {source: counts.get(source, 0) for source in SOURCES}


def counts_text(kind: Kind, counts: dict[str, int]) -> str:
    unit = "pairs" if kind == "preference" else "rows"
    parts = [f"{counts['ab_votes']} from blind A/B votes", f"{counts['corrections']} from corrections"]
    if kind == "kto":
        parts.append(f"{counts['thumbs']} from thumbs up/down")
    total = sum(counts.values())
    return f"{total} {unit if total != 1 else unit[:-1]}: " + ", ".join(parts)


def export(ws: Workspace, kind: Kind, *, minimum: int = MIN_ROWS, name: str | None = None,
           dry_run: bool = False) -> tuple[DatasetVersion | None, dict[str, Any]]:
    """Turn the feedback into a dataset version of `kind`; returns (version, {"counts", "rows", "text"}).

    Refused (InvalidInput, saying what gives more) when fewer than `minimum` rows come out."""
    import datasets

    from studio.data.kinds import KINDS
    from studio.data.store import save_version

    if minimum < 1:
        raise InvalidInput(f"A minimum of {minimum} rows would save an empty dataset.", f"Use 1 or more (default "
                                                                                       f"{MIN_ROWS}).")
    rows, counts = collect(ws, kind)
    text = counts_text(kind, counts)
    if len(rows) < minimum:
        more = ("vote in more blind A/B comparisons (Evaluate tab) or correct more answers in the Chat tab"
                if kind == "preference" else "rate more answers with thumbs up/down in the Chat tab, vote in blind "
                                             "A/B comparisons or correct answers")
        extra = (f" A KTO dataset would hold {counts_text('kto', collect(ws, 'kto')[1])} (the kind 'kto'; "
                 "--kind kto on the command line)." if kind == "preference" else "")
        raise InvalidInput(
            f"Too little feedback to train on: {text}; at least {minimum} are needed.{extra}",
            f"To get more, {more}.",
        )
    info = {"counts": counts, "rows": len(rows), "text": text}
    if dry_run:
        return None, info
    columns = KINDS[kind]
    train = datasets.Dataset.from_list([{c: r[c] for c in columns} for r in rows])
    fields = _fields_of(ws, [r["run_id"] for r in rows if r.get("run_id")])
    digest = hashlib.sha256(json.dumps(["feedback-export", kind, train.to_list(), fields],
                                       ensure_ascii=False).encode()).hexdigest()
    unit = "pairs" if kind == "preference" else "rows"
    version, _ = save_version(
        ws, content_hash=digest, name=(name or "").strip() or f"chat feedback ({kind}, {len(rows)} {unit})",
        train=train, val=train.select([]), source_name="chat and evaluation feedback",
        source_format=f"feedback-{kind}", mapping={"sources": counts},
        report={"kind": kind, "sources": counts, "rows_in": len(rows), "rows_train": len(rows), "rows_val": 0},
        **fields,
    )
    return version, info


def _fields_of(ws: Workspace, run_ids: list[str]) -> dict[str, Any]:
    """The template and base model of the dataset the rated run learnt from (the most rated run), so a
    run on the export reads the prompts as the model that answered them did."""
    from studio.data.store import get_version
    from studio.training.runs import get_run

    for run_id, _ in Counter(run_ids).most_common():
        try:
            version = get_version(ws, get_run(ws, run_id).dataset_id)
        except NotFound:
            continue
        return {"base_model": version.base_model, "template": version.template,
                "system_prompt": version.system_prompt, "max_length": version.max_length}
    return {}
