"""Checks on the conversations of one file: what is rejected (with a reason per row), what is only warned
about, and the seeded train/validation split. Vectorised with Arrow compute; token counts come from
studio.data.render.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from studio.data.render import count_tokens, truncate_chat

if TYPE_CHECKING:
    import pyarrow as pa

    from studio.data.mapping import Conversations

SHORT_ANSWER_TOKENS = 3  # answers with fewer tokens of their own teach little but "stop": a warning
EXAMPLE_ROWS = 10  # rows named per check in the report; every one is in rejected.csv
# RE2 patterns (Arrow's regex engine). Warnings, not rejections: a support sheet may hold a help-desk address.
PII_PATTERNS = {
    "email addresses": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "phone numbers": (r"(\+[0-9]{1,3}[ .-]?\(?[0-9]{1,4}\)?([ .-]?[0-9]{2,4}){2,4})"
                      r"|(\([0-9]{3}\) ?[0-9]{3}[ .-][0-9]{4})|(\b[0-9]{3}[.-][0-9]{3}[.-][0-9]{4}\b)"
                      r"|(\b0[0-9]{2,4}[ .-][0-9]{3,4}[ .-][0-9]{3,4}\b)"),
    "national-id-like numbers": (r"(\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b)"
                                 r"|(\b[A-CEGHJ-PR-TW-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b)"
                                 r"|(\b[0-9]{9,15}\b)"),
}


def normalise(texts: pa.Array) -> pa.Array:
    """Lower case, punctuation and symbols dropped, runs of whitespace as one space."""
    import pyarrow.compute as pc

    out = pc.replace_substring_regex(pc.utf8_lower(texts), r"[\p{P}\p{S}]+", " ")
    # splitting on whitespace and joining is ~5x faster than a \s+ regex
    return pc.binary_join(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(out)), " ")


def codes_of(texts: pa.Array) -> np.ndarray:
    """An integer per distinct text (hashing each string once)."""
    import pandas as pd

    codes, _ = pd.factorize(texts.to_pandas(), sort=False)
    return codes.astype(np.int64)


def pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return codes_of_ints(a * (int(b.max(initial=0)) + 1) + b)


def codes_of_ints(values: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)


def first_occurrence(codes: np.ndarray) -> np.ndarray:
    """For each row, the position of the first row with the same code."""
    first = np.full(int(codes.max()) + 1 if len(codes) else 0, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    return first[codes]


@dataclass
class Checked:
    """The outcome of checking one file's conversations."""

    kept: Conversations
    question_keys: pa.Array  # the kept rows' prompts, normalised: what the split and the leak check compare
    tokens: np.ndarray  # of the kept rows
    answer_tokens: np.ndarray
    counted_tokens: np.ndarray  # every row that was tokenised (kept and too long), for the histogram
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (source index, reason)
    reasons: dict[str, list[int]] = field(default_factory=dict)  # check name -> source indexes rejected
    truncated: list[int] = field(default_factory=list)
    warnings: dict[str, list[int]] = field(default_factory=dict)  # check name -> source indexes
    tokens_linear: bool = True


def check_conversations(
    tokenizer, conv: Conversations, *, max_length: int, length_policy: str, row_numbers: np.ndarray,
    row_label: str,
) -> Checked:
    """Reject unusable rows (empty, duplicate, too long), cut or drop long ones, warn about the rest."""
    import pyarrow.compute as pc

    rejected: list[tuple[int, str]] = []
    reasons: dict[str, list[int]] = {}

    def reject(check: str, index: int, reason: str) -> None:
        rejected.append((int(index), reason))
        reasons.setdefault(check, []).append(int(index))

    def where(position: int) -> str:
        return f"{row_label} {int(row_numbers[conv.index[position]])}"

    for index, reason in conv.invalid:
        reject("not a usable chat", index, reason)
    keep = np.ones(len(conv), dtype=bool)
    empty_q = pc.equal(conv.question, "").to_numpy(zero_copy_only=False)
    empty_a = pc.equal(conv.answer, "").to_numpy(zero_copy_only=False)
    for pos in np.flatnonzero(empty_q):
        reject("empty question", conv.index[pos], "the question/instruction is empty")
    for pos in np.flatnonzero(empty_a & ~empty_q):
        reject("empty answer", conv.index[pos], "the answer is empty")
    keep &= ~(empty_q | empty_a)
    conv = conv.take(np.flatnonzero(keep))
    norm_prompt, norm_answer = normalise(conv.prompt), normalise(conv.answer)
    norm_codes = (codes_of(norm_prompt), codes_of(norm_answer))
    keep = np.ones(len(conv), dtype=bool)
    for check, (prompt_codes, answer_codes), text in (
        ("exact duplicate", (codes_of(conv.prompt), codes_of(conv.answer)), "exact duplicate of {}"),
        ("near duplicate", norm_codes, "same as {} apart from case, spacing or punctuation"),
    ):
        candidates = np.flatnonzero(keep)
        first = first_occurrence(pair_codes(prompt_codes[candidates], answer_codes[candidates]))
        for pos in np.flatnonzero(first != np.arange(len(candidates))):
            reject(check, conv.index[candidates[pos]], text.format(where(candidates[first[pos]])))
            keep[candidates[pos]] = False
    positions = np.flatnonzero(keep)
    conv, norm_prompt = conv.take(positions), _take(norm_prompt, positions)
    norm_codes = (norm_codes[0][positions], norm_codes[1][positions])
    counts = count_tokens(tokenizer, conv)
    tokens, answer_tokens = counts.tokens.copy(), counts.answer_tokens.copy()
    counted = counts.tokens.copy()
    over = np.flatnonzero(tokens > max_length)
    keep = np.ones(len(conv), dtype=bool)
    truncated: list[int] = []
    replacements: dict[int, list[dict]] = {}
    for pos in over:
        if length_policy == "truncate":
            chat = conv.messages[int(pos)].as_py()
            cut = truncate_chat(tokenizer, chat, max_length)
            if cut is not None:
                replacements[int(pos)], new_total = cut
                answer_tokens[pos] -= tokens[pos] - new_total
                tokens[pos] = new_total
                truncated.append(int(conv.index[pos]))
                continue
            reject("too long", conv.index[pos], f"{tokens[pos]} tokens, and the question alone leaves no room for "
                   f"an answer under the max length of {max_length}")
        else:
            reject("too long", conv.index[pos], f"{tokens[pos]} tokens, over the max length of {max_length}")
        keep[pos] = False
    if replacements:
        conv = _replace_chats(conv, replacements)
    positions = np.flatnonzero(keep)
    conv, norm_prompt = conv.take(positions), _take(norm_prompt, positions)
    norm_codes = (norm_codes[0][positions], norm_codes[1][positions])
    tokens, answer_tokens = tokens[positions], answer_tokens[positions]
    suffix = counts.suffix_tokens[positions]
    warnings: dict[str, list[int]] = {}
    short = np.flatnonzero(answer_tokens - suffix < SHORT_ANSWER_TOKENS)
    if len(short):
        warnings["very short answers"] = conv.index[short].tolist()
    for kind, pattern in PII_PATTERNS.items():
        found = np.zeros(len(conv), dtype=bool)
        for texts in (conv.prompt, conv.answer):
            found |= pc.match_substring_regex(texts, pattern).to_numpy(zero_copy_only=False)
        if found.any():
            warnings[f"possible personal data: {kind}"] = conv.index[found].tolist()
    conflicting = _conflicting_answers(*norm_codes)
    if len(conflicting):
        warnings["same question, different answers"] = conv.index[conflicting].tolist()
    return Checked(conv, norm_prompt, tokens, answer_tokens, counted, rejected, reasons, truncated, warnings,
                   tokens_linear=counts.jinja_shapes == 0)


def _take(array: pa.Array, positions: np.ndarray) -> pa.Array:
    import pyarrow as pa

    return array if len(positions) == len(array) else array.take(pa.array(positions))


def _replace_chats(conv: Conversations, replacements: dict[int, list[dict]]) -> Conversations:
    import pyarrow as pa

    from studio.data.mapping import Conversations

    positions = sorted(replacements)
    extra = pa.array([replacements[p] for p in positions], type=conv.messages.type)
    take = np.arange(len(conv), dtype=np.int64)
    take[positions] = len(conv) + np.arange(len(positions))
    messages = pa.concat_arrays([conv.messages, extra]).take(pa.array(take))
    answers = pa.concat_arrays([conv.answer, pa.array([replacements[p][-1]["content"] for p in positions])])
    return Conversations(messages, conv.index, conv.prompt, answers.take(pa.array(take)), conv.question)


def _conflicting_answers(question_codes: np.ndarray, answer_codes: np.ndarray) -> np.ndarray:
    """Rows whose (normalised) question also appears with a different answer."""
    if len(question_codes) == 0:
        return np.array([], dtype=np.int64)
    pairs = np.unique(np.stack([question_codes, answer_codes], axis=1), axis=0)
    answers_per_question = np.bincount(pairs[:, 0], minlength=int(question_codes.max()) + 1)
    return np.flatnonzero(answers_per_question[question_codes] > 1)


def split_rows(keys: pa.Array, *, val_fraction: float, val_size: int | None, seed: int) -> np.ndarray:
    """A seeded train/validation split that keeps rows with the same normalised question (`keys`, from
    normalise()) on one side, so validation never measures questions seen in training. True = validation."""
    n = len(keys)
    is_val = np.zeros(n, dtype=bool)
    target = int(val_size) if val_size is not None else int(round(n * val_fraction))
    if val_size is None and val_fraction > 0 and n >= 2:
        target = max(target, 1)
    target = min(target, n - 1)
    if target <= 0:
        return is_val
    group = first_occurrence(codes_of(keys))
    groups, sizes = np.unique(group, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(groups))
    chosen, total = [], 0
    for g in order:
        if total >= target:
            break
        if total + sizes[g] > target and (total > 0 or sizes[g] >= n):
            continue  # a big group would overshoot (or leave no training rows): try the next one
        chosen.append(groups[g])
        total += sizes[g]
    is_val[np.isin(group, chosen)] = True
    return is_val


def leaked(train_keys: pa.Array, val_keys: pa.Array) -> np.ndarray:
    """Positions of validation rows whose normalised question is also a training question."""
    import pyarrow.compute as pc

    return np.flatnonzero(pc.is_in(val_keys, value_set=train_keys).to_numpy(zero_copy_only=False))
