"""How close an answer is to the reference: exact match, token F1 and ROUGE-L, on normalised words (as
SQuAD's scorer normalises: lower case, no punctuation, no articles)."""

from __future__ import annotations

import string
from collections import Counter

SCORES = ("exact_match", "token_f1", "rouge_l")
# Below this token F1 an answer shares next to no words with the reference (a 20-word reference and a
# 20-word answer with one word in common score 0.05): when both answers are below it, neither "won".
CLOSE_F1 = 0.1
CLOSER = ("tuned", "base", "tie", "neither")


def normalize(text: str) -> list[str]:
    """Lower case, no punctuation, no articles, single spaces (as SQuAD's scorer does) -> words."""
    text = text.lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return [w for w in text.split() if w not in ("a", "an", "the")]


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of word precision and recall, counting repeated words (SQuAD's F1)."""
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common word subsequence, as precision and recall."""
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    previous = [0] * (len(ref) + 1)
    for word in pred:
        current = [0]
        for j, ref_word in enumerate(ref, 1):
            current.append(previous[j - 1] + 1 if word == ref_word else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, reference: str) -> dict[str, float]:
    return {"exact_match": exact_match(prediction, reference), "token_f1": token_f1(prediction, reference),
            "rouge_l": rouge_l(prediction, reference)}


def closer(tuned_f1: float, base_f1: float) -> str:
    """Which answer is closer to the reference by token F1: "tuned", "base", "tie", or "neither" when both
    are below CLOSE_F1 (gibberish at 0.03 against 0.0 is no win)."""
    if tuned_f1 < CLOSE_F1 and base_f1 < CLOSE_F1:
        return "neither"
    return "tuned" if tuned_f1 > base_f1 else "base" if base_f1 > tuned_f1 else "tie"


def closer_counts(items: list[dict]) -> dict[str, int]:
    """Per outcome of closer(), how many scored items (each with "tuned" and "base" scores) had it."""
    wins = Counter(closer(i["tuned"]["token_f1"], i["base"]["token_f1"]) for i in items)
    return {k: wins.get(k, 0) for k in CLOSER}


def closer_sentence(better: dict[str, int], new: str, old: str, bold: bool = False) -> str:
    """closer_counts() in words: "The tuned model answered closer to your answer on 3 questions, the base
    model on 0, equally on 0; on 2 neither answer was close to yours (token F1 below 0.1 for both)."
    Summaries stored before "neither" existed have no such key: it reads as 0."""
    b = (lambda n: f"**{n}**") if bold else str
    text = (f"{new[0].upper()}{new[1:]} answered closer to your answer on {b(better.get('tuned', 0))} questions, "
            f"{old} on {b(better.get('base', 0))}, equally on {better.get('tie', 0)}")
    if better.get("neither"):
        text += (f"; on {b(better['neither'])} neither answer was close to yours (token F1 below {CLOSE_F1} "
                 "for both)")
    return text + "."
