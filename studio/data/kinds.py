"""What a dataset version teaches, told by its columns: the contract shared by the Data tab and training.

sft         `messages`: a chat ending with the answer to learn.
preference  `prompt` (the chat up to the question), `chosen` and `rejected` (one assistant message each).
kto         `prompt`, `completion` (one assistant message) and `label` (true = good, false = bad).
These are TRL's conversational formats, so the trainers read them as they are.
"""

from __future__ import annotations

KINDS: dict[str, tuple[str, ...]] = {
    "sft": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
# which kinds of data each training objective can learn from (kto also reads pairs: chosen good, rejected bad)
OBJECTIVE_KINDS: dict[str, tuple[str, ...]] = {
    "sft": ("sft",), "dpo": ("preference",), "orpo": ("preference",), "kto": ("kto", "preference"),
}
KIND_WORDS = {"sft": "question/answer rows", "preference": "pairs of a chosen and a rejected answer",
              "kto": "answers labelled good or bad"}


def kind_of(columns) -> str:
    """The kind of a table with these column names ('sft' when none matches: the old one-column layout)."""
    names = set(columns)
    for kind, needed in KINDS.items():
        if set(needed) <= names:
            return kind
    return "sft"


def mismatch(objective: str, kind: str) -> str | None:
    """Why an objective cannot learn from a kind of data, or None when it can."""
    allowed = OBJECTIVE_KINDS.get(objective, ("sft",))
    if kind in allowed:
        return None
    wanted = " or ".join(KIND_WORDS[k] for k in allowed)
    return f"{objective.upper()} learns from {wanted}, but this dataset holds {KIND_WORDS[kind]}."


def mismatch_fix(objective: str) -> str:
    if objective == "sft":
        return "Pick a question/answer dataset, or choose DPO, ORPO or KTO for a preference dataset."
    return ("Import a preference file (prompt, chosen, rejected; or prompt, completion, label for KTO) in the "
            "Data tab, or make one from the chat feedback: studio feedback export --kind "
            f"{'kto' if objective == 'kto' else 'preference'}.")
