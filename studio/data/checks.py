"""Checks on the conversations of one file, one batch at a time: what is rejected (with a reason per row), what
is only warned about, and the seeded train/validation split. Vectorised with Arrow compute; duplicates and the
split are decided on 64-bit hashes of the (normalised) texts, so a file of any length needs 16 bytes a row of
state; token counts come from studio.data.render.
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


def hash64(texts: pa.Array) -> np.ndarray:
    """A 64-bit xxh3 hash of each string, read from Arrow's buffers without making Python strings. Equal texts
    hash equal in every batch; two different texts collide with a chance of ~n²/2⁶⁵ (1e-8 for a million rows)."""
    import pyarrow as pa
    import xxhash

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if texts.null_count:
        texts = texts.fill_null("")
    if pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())
    n = len(texts)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)[texts.offset:texts.offset + n + 1].tolist()
    data = memoryview(texts.buffers()[2] or b"")
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(data[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)), dtype=np.uint64,
                       count=n)


def pair_hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One 64-bit key for a pair of hashes (prompt, answer)."""
    with np.errstate(over="ignore"):
        return (a * np.uint64(0x9E3779B97F4A7C15)) ^ ((b << np.uint64(31)) | (b >> np.uint64(33)))


class FirstSeen:
    """64-bit keys seen so far in a file, each with the row number where it first appeared: the duplicate
    decisions of a whole file, taken batch by batch (16 bytes a distinct row)."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)  # sorted
        self.rows = np.empty(0, dtype=np.int64)

    def first_rows(self, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """For each key, the row number of its first appearance (its own row when it is new); the new keys are
        remembered."""
        local = first_occurrence(codes_of_ints(keys)) if len(keys) else np.empty(0, dtype=np.int64)
        first = rows[local]
        if len(self.keys):
            at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
            known = self.keys[at] == keys
            first = np.where(known, self.rows[at], first)
        else:
            known = np.zeros(len(keys), dtype=bool)
        new = ~known & (local == np.arange(len(keys)))
        order = np.argsort(keys[new], kind="stable")
        add_keys, add_rows = keys[new][order], rows[new][order]
        where = np.searchsorted(self.keys, add_keys)
        self.keys, self.rows = np.insert(self.keys, where, add_keys), np.insert(self.rows, where, add_rows)
        return first


def codes_of(texts: pa.Array) -> np.ndarray:
    """An integer per distinct text (hashing each string once)."""
    import pandas as pd

    codes, _ = pd.factorize(texts.to_pandas(), sort=False)
    return codes.astype(np.int64)


def codes_of_ints(values: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)


def first_occurrence(codes: np.ndarray) -> np.ndarray:
    """For each row, the position of the first row with the same code."""
    first = np.full(int(codes.max()) + 1 if len(codes) else 0, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    return first[codes]


class Seen:
    """What the duplicate checks of one file remember between batches."""

    def __init__(self) -> None:
        self.exact, self.near = FirstSeen(), FirstSeen()


@dataclass
class Checked:
    """The outcome of checking one batch of a file's conversations."""

    kept: Conversations
    question_hash: np.ndarray  # the kept rows' prompts, normalised and hashed: what the split and leak check compare
    answer_hash: np.ndarray  # the kept rows' answers, normalised and hashed: the conflicting-answers warning
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
    row_label: str, seen: Seen | None = None,
) -> Checked:
    """Reject unusable rows (empty, duplicate, too long), cut or drop long ones, warn about the rest. `seen`
    carries the duplicate checks over the batches of one file (a fresh one: this batch is the whole file)."""
    import pyarrow.compute as pc

    rejected: list[tuple[int, str]] = []
    reasons: dict[str, list[int]] = {}
    seen = seen or Seen()

    def reject(check: str, index: int, reason: str) -> None:
        rejected.append((int(index), reason))
        reasons.setdefault(check, []).append(int(index))

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
    rows = np.asarray(row_numbers, dtype=np.int64)[conv.index]
    question_hash, answer_hash = hash64(normalise(conv.prompt)), hash64(normalise(conv.answer))
    first = seen.exact.first_rows(pair_hash(hash64(conv.prompt), hash64(conv.answer)), rows)
    keep = first == rows
    for pos in np.flatnonzero(~keep):
        reject("exact duplicate", conv.index[pos], f"exact duplicate of {row_label} {first[pos]}")
    candidates = np.flatnonzero(keep)
    first = seen.near.first_rows(pair_hash(question_hash[candidates], answer_hash[candidates]), rows[candidates])
    for pos in np.flatnonzero(first != rows[candidates]):
        reject("near duplicate", conv.index[candidates[pos]],
               f"same as {row_label} {first[pos]} apart from case, spacing or punctuation")
        keep[candidates[pos]] = False
    positions = np.flatnonzero(keep)
    conv = conv.take(positions)
    question_hash, answer_hash = question_hash[positions], answer_hash[positions]
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
    conv = conv.take(positions)
    question_hash, answer_hash = question_hash[positions], answer_hash[positions]
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
    return Checked(conv, question_hash, answer_hash, tokens, answer_tokens, counted, rejected, reasons, truncated,
                   warnings, tokens_linear=counts.jinja_shapes == 0)


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


def conflicting_answers(question_hash: np.ndarray, answer_hash: np.ndarray) -> np.ndarray:
    """Positions of rows whose (normalised) question also appears with a different answer."""
    if len(question_hash) == 0:
        return np.array([], dtype=np.int64)
    question_codes, answer_codes = codes_of_ints(question_hash), codes_of_ints(answer_hash)
    pairs = np.unique(np.stack([question_codes, answer_codes], axis=1), axis=0)
    answers_per_question = np.bincount(pairs[:, 0], minlength=int(question_codes.max()) + 1)
    return np.flatnonzero(answers_per_question[question_codes] > 1)


def split_rows(keys: pa.Array | np.ndarray, *, val_fraction: float, val_size: int | None, seed: int) -> np.ndarray:
    """A seeded train/validation split that keeps rows with the same normalised question (`keys`: from
    normalise(), or their 64-bit hashes) on one side, so validation never measures questions seen in training.
    Groups are drawn in the order of their first row, so the hashes split exactly as the texts. True = validation."""
    n = len(keys)
    is_val = np.zeros(n, dtype=bool)
    target = int(val_size) if val_size is not None else int(round(n * val_fraction))
    if val_size is None and val_fraction > 0 and n >= 2:
        target = max(target, 1)
    target = min(target, n - 1)
    if target <= 0:
        return is_val
    group = first_occurrence(codes_of_ints(keys) if isinstance(keys, np.ndarray) else codes_of(keys))
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


def leaked(train_keys: np.ndarray, val_keys: np.ndarray) -> np.ndarray:
    """Positions of validation rows whose normalised question (hashed) is also a training question."""
    return np.flatnonzero(np.isin(val_keys, train_keys))
