"""Corrections from the chat: a thumbs-down with the answer the expert wanted becomes a training row.

Dataset versions are immutable, so each correction saves a new version through the store: the
rows of the dataset the run was trained on (or of the previous feedback version made from it), plus
every correction so far; its val split is the original's, so the next run is measured the same way.
Without a run (a remote endpoint, the base model) the corrections form a dataset of their own.
Every correction is also appended to evaluations/feedback.jsonl with the rejected answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from studio.core import access
from studio.core.db import now
from studio.core.errors import InvalidInput
from studio.core.files import read_jsonl

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.data.store import DatasetVersion

STANDALONE = "chat-corrections"


def add_correction(
    ws: Workspace,
    messages: list[dict],
    corrected: str,
    *,
    rejected: str = "",
    run_id: str | None = None,
    model: str = "",
) -> DatasetVersion:
    """Save `messages` (system?, user, assistant, ..., ending with the user's question) + `corrected`
    as a new row; return the new dataset version that holds it."""
    access.require(ws, "chat.feedback")
    import datasets

    from studio.data.store import list_versions, load_split, save_version

    corrected = (corrected or "").strip()
    context = [{"role": m["role"], "content": str(m["content"])} for m in messages if str(m.get("content", "")).strip()]
    if not corrected:
        raise InvalidInput("The corrected answer is empty.", "Write the answer the model should have given.")
    if not context or context[-1]["role"] != "user":
        raise InvalidInput("There is no question to attach the correction to.", "Ask the model something first.")
    if rejected.strip() and corrected == rejected.strip():
        raise InvalidInput("The corrected answer is the same as the model's.", "Change it to the answer you want.")
    row = {"messages": [*context, {"role": "assistant", "content": corrected}]}

    origin = _origin(ws, run_id)
    previous = _latest_feedback(list_versions(ws), origin.id if origin else None)
    start = previous or origin
    if start is not None:
        train = load_split(ws, start.id, "train").to_list()
        val = load_split(ws, start.id, "val")
        fields = {k: getattr(start, k) for k in ("base_model", "template", "system_prompt", "max_length")}
        corrections = (previous.mapping.get("corrections", 0) if previous else 0) + 1
        name = f"{origin.name if origin else STANDALONE} + {corrections} correction{'s' if corrections > 1 else ''}"
    else:
        train, val, fields, corrections, name = [], None, {}, 1, STANDALONE
    train = [{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]} for r in train]
    train.append(row)
    train_set = datasets.Dataset.from_list(train)
    if val is None or len(val) == 0:
        val = train_set.select([])  # no held-out rows, but the same column
    digest = hashlib.sha256(json.dumps(["feedback", origin.id if origin else None, train,
                                        val.to_list()], ensure_ascii=False).encode()).hexdigest()
    mapping = {"feedback_of": origin.id if origin else None, "corrections": corrections}
    version, _ = save_version(
        ws, content_hash=digest, name=name, train=train_set, val=val,
        source_name=f"chat corrections ({run_id or model or 'endpoint'})", source_format="feedback",
        mapping=mapping, **fields,
    )
    _append(ws.evaluations_dir / "feedback.jsonl", {"at": now(), "run_id": run_id, "model": model, "messages": context,
                                                    "rejected": rejected, "corrected": corrected,
                                                    "dataset_id": version.id})
    return version


def _origin(ws: Workspace, run_id: str | None) -> DatasetVersion | None:
    """The dataset a run was trained on, when it still exists (and is not itself feedback-derived)."""
    if not run_id:
        return None
    from studio.core.errors import NotFound
    from studio.data.store import get_version
    from studio.training.runs import get_run

    run = get_run(ws, run_id)  # a run id that names no run is refused, not saved as a standalone correction
    try:
        version = get_version(ws, run.dataset_id)
    except NotFound:
        return None
    root = version.mapping.get("feedback_of") if version.source_format == "feedback" else None
    if root:
        try:
            return get_version(ws, root)
        except NotFound:
            return version
    return version


def _latest_feedback(versions: list[DatasetVersion], origin_id: str | None) -> DatasetVersion | None:
    """The feedback version with the most corrections made from this origin (each one holds all earlier)."""
    made = [v for v in versions if v.source_format == "feedback" and v.mapping.get("feedback_of") == origin_id]
    return max(made, key=lambda v: v.mapping.get("corrections", 0), default=None)


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def corrections(ws: Workspace) -> list[dict]:
    return read_jsonl(ws.evaluations_dir / "feedback.jsonl")


def add_thumb(ws: Workspace, messages: list[dict], answer: str, liked: bool | None, *, run_id: str | None = None,
              model: str = "") -> dict:
    """Record a thumbs-up or thumbs-down on `answer` to `messages` (ending with the user's question) in
    evaluations/thumbs.jsonl: each one is a KTO row (`studio feedback export --kind kto`). `liked=None` withdraws
    the thumb given to that answer (pressing the same thumb again); a later thumb on the same answer replaces an
    earlier one, so an answer is never both good and bad."""
    access.require(ws, "chat.feedback")
    context = [{"role": m["role"], "content": str(m["content"])} for m in messages if str(m.get("content", "")).strip()]
    if not str(answer or "").strip():
        raise InvalidInput("The answer to rate is empty.", "Rate an answer the model gave.")
    if not context or context[-1]["role"] != "user":
        raise InvalidInput("There is no question to attach the rating to.", "Ask the model something first.")
    record = {"at": now(), "run_id": run_id, "model": model, "messages": context, "answer": str(answer).strip(),
              "liked": None if liked is None else bool(liked)}
    _append(ws.evaluations_dir / "thumbs.jsonl", record)
    return record


def thumbs(ws: Workspace) -> list[dict]:
    """The thumbs that stand: the last one given to each answer (same run, pane, conversation and answer),
    without the withdrawn ones, in the order they were first given."""
    standing: dict[str, dict] = {}
    for record in read_jsonl(ws.evaluations_dir / "thumbs.jsonl"):
        key = json.dumps([record.get("run_id"), record.get("model"), record["messages"], record["answer"]])
        if record.get("liked") is None:
            standing.pop(key, None)
        else:
            standing[key] = standing.get(key, record) | {"liked": record["liked"], "at": record["at"]}
    return list(standing.values())
