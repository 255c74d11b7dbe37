"""Golden sets: the expert's own questions with the answers they expect, from a table, a CSV or JSONL
file, or the run's held-out split; and a hash that says two evaluations asked exactly the same questions."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from studio.core.errors import InvalidInput

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

QUESTION_COLUMNS = ("question", "prompt", "input", "instruction", "query")
REFERENCE_COLUMNS = ("reference_answer", "reference", "answer", "expected_answer", "expected", "output", "response")


class GoldenItem(BaseModel):
    question: str
    reference: str
    context: list[dict] = []  # earlier messages (system prompt, earlier turns) for held-out rows


def _pick(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [re.sub(r"[\s-]+", "_", h.strip().lower()) for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def golden_from_rows(rows: list[list[Any]] | list[dict], source: str = "the table",
                     empty_fix: str = "Add rows with a question and the answer you expect.") -> list[GoldenItem]:
    """Rows of (question, reference answer); blank rows are skipped, half-filled ones refused; none at all is
    refused with `empty_fix` (where the rows can come from)."""
    items, problems = [], []
    for number, row in enumerate(rows, 1):
        if isinstance(row, dict):
            values = list(row.values())
        else:
            values = list(row)
        question = str(values[0] if values and values[0] is not None else "").strip()
        reference = str(values[1] if len(values) > 1 and values[1] is not None else "").strip()
        if question.lower() == "nan":
            question = ""
        if reference.lower() == "nan":
            reference = ""
        if not question and not reference:
            continue
        if not question or not reference:
            problems.append(f"row {number}: the {'question' if not question else 'reference answer'} is empty")
            continue
        items.append(GoldenItem(question=question, reference=reference))
    if problems:
        more = f" ({len(problems) - 3} more like it)" if len(problems) > 3 else ""
        raise InvalidInput(f"In {source}, {'; '.join(problems[:3])}{more}.",
                           "Fill in both the question and the reference answer, or clear the row.")
    if not items:
        raise InvalidInput(f"{source[:1].upper()}{source[1:]} has no questions.", empty_fix)
    return items


def read_golden(path: str | Path) -> list[GoldenItem]:
    """A CSV (or JSONL) with a question column and a reference-answer column."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInput(f"The golden set {path} {'is a folder' if path.is_dir() else 'does not exist'}.",
                           "Give the path of a CSV (or JSONL) file with question and reference_answer columns.")
    from studio.data.table import sniff_encoding

    raw = path.read_bytes()
    encoding = sniff_encoding(raw[:65536])  # as the Data tab reads a spreadsheet: BOMs, UTF-16, Windows-1252
    if encoding is None:
        raise InvalidInput(f"{path.name} is not a text file.",
                           "Save the golden set as CSV (or JSONL) with question and reference_answer columns.")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:  # a byte past the sniffed start that the encoding does not have
        text = raw.decode("latin-1")
    if path.suffix.lower() in (".jsonl", ".json"):
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path.name} is not JSON lines ({exc}).", "Save one JSON object per line.") from exc
        header = list(records[0]) if records else []
        rows = [[r.get(k) for k in header] for r in records]
    else:
        table = list(csv.reader(io.StringIO(text)))
        header, rows = (table[0], table[1:]) if table else ([], [])
    q, r = _pick(header, QUESTION_COLUMNS), _pick(header, REFERENCE_COLUMNS)
    if q is None or r is None:
        raise InvalidInput(
            f"{path.name} needs a question column and a reference answer column; "
            f"it has: {', '.join(header) or 'none'}.",
            "Name them 'question' and 'reference_answer' (or 'answer').",
        )
    return golden_from_rows([[row[q] if q < len(row) else "", row[r] if r < len(row) else ""] for row in rows],
                            source=path.name)


def golden_hash(items: list[GoldenItem]) -> str:
    payload = json.dumps([[i.context, i.question, i.reference] for i in items], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def heldout_items(ws: Workspace, dataset_id: str, limit: int) -> list[GoldenItem]:
    """The run's val split as golden items: the conversation before the last answer, and that answer."""
    from studio.data.store import load_split

    rows = load_split(ws, dataset_id, "val")
    items = []
    for row in rows.select(range(min(limit, len(rows)))):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            continue
        last_user = messages[-2]["content"] if messages[-2]["role"] == "user" else ""
        items.append(GoldenItem(question=last_user, reference=messages[-1]["content"], context=messages[:-2]))
    return items


def run_golden_set(ws: Workspace, run_id: str) -> tuple[dict[str, Any], list[GoldenItem]] | None:
    """The golden set the run was last evaluated on (the set itself, as that evaluation stored it in its
    folder's golden.csv) and where it came from; None when the run has no golden-set evaluation."""
    with ws.db() as db:
        rows = list(db["evaluations"].rows_where("run_id = ? and kind = 'golden'", [run_id],
                                                 order_by="created_at desc, rowid desc", limit=1))
    if not rows:
        return None
    stored = Path(rows[0]["path"]) / "golden.csv"
    if not stored.is_file():
        return None
    items = read_golden(stored)
    origin = {"kind": "golden", "evaluation": rows[0]["id"], "name": rows[0]["golden_set"],
              "hash": rows[0].get("golden_hash") or golden_hash(items)}
    return origin, items


def seen_in_training(ws: Workspace, dataset_id: str, golden: list[GoldenItem]) -> list[int]:
    """The golden questions (their positions) that are also a question of the dataset's training rows, compared
    as the split compares them (lower case, punctuation dropped): scores on those measure how well the model
    repeats what it was trained on, not how it answers a question it has not seen."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from studio.core.errors import NotFound
    from studio.data.checks import normalise
    from studio.data.store import get_version

    try:
        messages = pq.read_table(get_version(ws, dataset_id).split_path("train"), columns=["messages"])["messages"]
    except (NotFound, OSError, KeyError):
        return []
    turns = pc.list_flatten(messages)
    if not len(turns):
        return []
    asked = pc.filter(pc.struct_field(turns, "content"), pc.equal(pc.struct_field(turns, "role"), "user"))
    trained = pc.unique(normalise(asked.combine_chunks() if isinstance(asked, pa.ChunkedArray) else asked))
    mine = normalise(pa.array([item.question for item in golden], pa.string()))
    return [int(i) for i in pc.indices_nonzero(pc.is_in(mine, value_set=trained)).to_pylist()]


def seen_sentence(summary: dict[str, Any]) -> str:
    """The warning an evaluation carries when its golden questions were in the training data (empty if none)."""
    seen, total = summary.get("seen_in_training") or 0, summary.get("questions") or 0
    if not seen:
        return ""
    which = "All" if seen == total else f"{seen} of {total}"
    return (f"⚠️ {which} golden questions are also in the run's training data: on those, the scores show how "
            "well the model repeats what it was trained on, not how it answers new questions. For a fair test, "
            "ask questions it has not seen.")
