"""Rendering: conversations → the exact text the model reads → token counts, with the answers marked.

Counting 100k rows must not loop in Python over Jinja: a template renders a conversation of a given
shape (system?, user, assistant, ...) as fixed literals around the message contents, so each shape is
rendered once with placeholders, checked against real Jinja on sample rows, then filled in with Arrow.
Templates for which that check fails are rendered row by row with Jinja. Tokens come from the fast
tokenizer in batches; the answer's first token is found from its character offset in the same pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from studio.core.errors import InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa

    from studio.data.mapping import Conversations

BATCH_ROWS = 512  # texts per tokenizer call: enough for its threads; an Encoding costs ~100 bytes a token
_PROBES = (("\ue000", "\ue001"), ("\ue002x", "\ue003"))  # private-use characters: never in a template


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """One conversation through the tokenizer's chat template; a template that refuses it raises InvalidInput."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja2.TemplateError, raise_exception(...) inside a template, ValueError
        roles = ", ".join(m["role"] for m in messages)
        fix = ("Remove the system prompt (this model's template does not accept one), or choose the chatml or "
               "alpaca template." if "system" in str(exc).lower() else "Choose the chatml or alpaca template.")
        raise InvalidInput(f"The chat template refused a conversation ({roles}): {exc}", fix) from exc


@dataclass
class Counts:
    tokens: np.ndarray  # tokens of the whole rendered conversation
    prompt_tokens: np.ndarray  # tokens before the final answer (including the assistant header)
    suffix_tokens: np.ndarray  # tokens the template adds after the final answer's text (end of turn)
    linear_shapes: int = 0
    jinja_shapes: int = 0

    @property
    def answer_tokens(self) -> np.ndarray:
        return self.tokens - self.prompt_tokens


def field_lists(messages: pa.ListArray, name: str) -> tuple[np.ndarray, pa.Array]:
    """(offsets rebased to 0, flat values of one struct field) of a possibly sliced list array."""
    flat = messages.flatten()
    lengths = messages.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    return np.concatenate([[0], np.cumsum(lengths)]), flat.field(name)


def _literals(tokenizer, roles: tuple[str, ...], add_generation_prompt: bool) -> list[str] | None:
    """The fixed text around each message of a conversation of this shape, or None if it depends on content."""
    results = []
    for left, right in _PROBES:
        marks = [f"{left}{i}{right}" for i in range(len(roles))]
        text = render(tokenizer, [{"role": r, "content": m} for r, m in zip(roles, marks, strict=True)],
                      add_generation_prompt)
        pieces, rest = [], text
        for mark in marks:
            if rest.count(mark) != 1:
                return None
            before, rest = rest.split(mark)
            pieces.append(before)
        results.append(pieces + [rest])
    return results[0] if results[0] == results[1] else None


class _Shape:
    def __init__(self, tokenizer, roles: tuple[str, ...]):
        self.roles = roles
        self.full = _literals(tokenizer, roles, False)
        self.prompt = _literals(tokenizer, roles[:-1], True)
        self.linear = self.full is not None and self.prompt is not None
        if self.linear:
            # the prompt must be the start of the full text, or offsets into it mean nothing
            self.linear = self.full[:-2] == self.prompt[:-1] and self.full[-2].startswith(self.prompt[-1])
        suffix = self.full[-1] if self.full else ""
        self.suffix_tokens = len(_encode_plain(tokenizer, [suffix])[0]) if suffix else 0

    def texts(self, contents: list[pa.Array]) -> tuple[list[str], np.ndarray]:
        import pyarrow as pa
        import pyarrow.compute as pc

        parts: list[Any] = []
        for literal, column in zip(self.full, contents, strict=False):
            parts += [pa.scalar(literal), column]
        parts.append(pa.scalar(self.full[-1]))
        texts = pc.binary_join_element_wise(*parts, "").to_pylist()
        prompt_chars = sum(len(p) for p in self.prompt) + sum(
            pc.utf8_length(c).to_numpy(zero_copy_only=False).astype(np.int64) for c in contents[:-1]
        )
        return texts, np.broadcast_to(prompt_chars, (len(texts),)).astype(np.int64)


def _encode_plain(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _backend(tokenizer):
    return getattr(tokenizer, "backend_tokenizer", None)


def _count_batch(tokenizer, texts: list[str], prompt_chars: np.ndarray, prompts: list[str] | None):
    """Token counts of full texts, and of the part before each answer (found by character offset)."""
    backend = _backend(tokenizer)
    total = np.empty(len(texts), dtype=np.int64)
    before = np.empty(len(texts), dtype=np.int64)
    if backend is None:  # a slow (Python) tokenizer: count the prompts separately
        prompt_texts = prompts or [t[:p] for t, p in zip(texts, prompt_chars, strict=True)]
        total[:] = [len(ids) for ids in _encode_plain(tokenizer, texts)]
        before[:] = [len(ids) for ids in _encode_plain(tokenizer, prompt_texts)]
        return total, before
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    for i, (enc, text, pos) in enumerate(zip(encodings, texts, prompt_chars, strict=True)):
        total[i] = len(enc)
        token = None
        if pos >= 0:
            for p in range(int(pos), min(int(pos) + 16, len(text))):
                token = enc.char_to_token(p)
                if token is not None:
                    break
        if token is None:
            prompt_text = prompts[i] if prompts else text[: max(int(pos), 0)]
            token = len(backend.encode(prompt_text, add_special_tokens=False))
        before[i] = token
    return total, before


def count_tokens(tokenizer, conversations: Conversations, seed: int = 0) -> Counts:
    """Render every conversation with the tokenizer's chat template and count its tokens."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(conversations)
    tokens, prompt_tokens, suffix = (np.zeros(n, dtype=np.int64) for _ in range(3))
    counts = Counts(tokens, prompt_tokens, suffix)
    if n == 0:
        return counts
    messages = conversations.messages
    offsets, contents = field_lists(messages, "content")
    _, roles = field_lists(messages, "role")
    role_lists = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int64()), roles)
    shape_ids = pc.binary_join(role_lists, ",").dictionary_encode()
    codes = shape_ids.indices.to_numpy(zero_copy_only=False)
    rng = random.Random(seed)
    for code, key in enumerate(shape_ids.dictionary.to_pylist()):
        roles_of_shape = tuple(key.split(","))
        rows = np.flatnonzero(codes == code)
        shape = _Shape(tokenizer, roles_of_shape)
        if shape.linear and not _agrees_with_jinja(tokenizer, shape, messages, offsets, contents, rows, rng):
            shape.linear = False
        counts.linear_shapes += shape.linear
        counts.jinja_shapes += not shape.linear
        suffix[rows] = shape.suffix_tokens
        for start in range(0, len(rows), BATCH_ROWS):
            batch = rows[start:start + BATCH_ROWS]
            if shape.linear:
                columns = [contents.take(pa.array(offsets[batch] + j)) for j in range(len(roles_of_shape))]
                texts, prompt_chars = shape.texts(columns)
                prompts = None
            else:
                texts, prompts = [], []
                for chat in messages.take(pa.array(batch)).to_pylist():
                    texts.append(render(tokenizer, chat))
                    prompts.append(render(tokenizer, chat[:-1], add_generation_prompt=True))
                prompt_chars = np.array([len(p) if t.startswith(p) else -1
                                         for t, p in zip(texts, prompts, strict=True)])
            total, before = _count_batch(tokenizer, texts, prompt_chars, prompts)
            tokens[batch], prompt_tokens[batch] = total, before
    return counts


def _agrees_with_jinja(tokenizer, shape: _Shape, messages, offsets, contents, rows, rng, checks: int = 12) -> bool:
    import pyarrow as pa

    picks = sorted(set(rows[:checks].tolist()) | set(rng.sample(rows.tolist(), min(checks, len(rows)))))
    picks = np.asarray(picks, dtype=np.int64)
    columns = [contents.take(pa.array(offsets[picks] + j)) for j in range(len(shape.roles))]
    texts, _ = shape.texts(columns)
    chats = messages.take(pa.array(picks)).to_pylist()
    return all(text == render(tokenizer, chat) for text, chat in zip(texts, chats, strict=True))


# --- what the preview shows ------------------------------------------------------------------------


def answer_spans(tokenizer, chat: list[dict], text: str, every_turn: bool = False) -> list[tuple[int, int]]:
    """Character spans of `text` that training learns: the final answer with the template's end of turn (as
    studio.training turns a chat into prompt/completion); with `every_turn`, every assistant turn."""
    spans, cursor = [], 0
    for i, message in enumerate(chat):
        if message["role"] != "assistant" or (not every_turn and i != len(chat) - 1):
            continue
        before = render(tokenizer, chat[:i], add_generation_prompt=True)
        upto = render(tokenizer, chat[: i + 1])
        if text.startswith(before) and text.startswith(upto):
            start, end = len(before), len(upto)
        else:  # a template that rewrites earlier turns: fall back to where the answer's text is
            start = text.find(message["content"], cursor)
            if start < 0:
                continue
            end = start + len(message["content"])
        spans.append((start, end))
        cursor = end
    return spans


def preview_tokens(tokenizer, chat: list[dict]) -> dict[str, Any]:
    """The rendered conversation split into tokens, each marked as trained (answer) or not (prompt)."""
    text = render(tokenizer, chat)
    spans = answer_spans(tokenizer, chat, text)

    def trained(pos: int) -> bool:
        return any(a <= pos < b for a, b in spans)

    backend = _backend(tokenizer)
    pieces: list[dict[str, Any]] = []
    if backend is not None:
        enc = backend.encode(text, add_special_tokens=False)
        added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        cursor = 0
        for token_id, (start, end) in zip(enc.ids, enc.offsets, strict=True):
            if end <= cursor and pieces:  # a character split over several byte tokens: same span
                pieces[-1]["tokens"] += 1
                continue
            pieces.append({"text": text[cursor:end], "trained": trained(start), "special": token_id in added,
                           "tokens": 1})
            cursor = max(cursor, end)
        if cursor < len(text) and pieces:
            pieces[-1]["text"] += text[cursor:]
        n_tokens = len(enc.ids)
        n_trained = sum(p["tokens"] for p in pieces if p["trained"])
    else:
        bounds = sorted({0, len(text), *[x for s in spans for x in s]})
        pieces = [{"text": text[a:b], "trained": trained(a), "special": False, "tokens": 0}
                  for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        n_tokens = len(_encode_plain(tokenizer, [text])[0])
        n_trained = sum(len(_encode_plain(tokenizer, [p["text"]])[0]) for p in pieces if p["trained"])
    return {"text": text, "pieces": pieces, "tokens": n_tokens, "trained_tokens": n_trained}


# --- cutting long answers to fit -------------------------------------------------------------------


def truncate_chat(tokenizer, chat: list[dict], max_length: int) -> tuple[list[dict], int] | None:
    """Shorten the final answer until the conversation fits in max_length tokens; None if the prompt alone
    leaves no room for an answer of at least a few tokens."""
    answer = chat[-1]["content"]
    backend = _backend(tokenizer)
    for _ in range(6):
        text = render(tokenizer, chat)
        total = len(_encode_plain(tokenizer, [text])[0])
        if total <= max_length:
            return chat, total
        if backend is not None:
            enc = backend.encode(answer, add_special_tokens=False)
            ends = [end for _, end in enc.offsets]
        else:
            ends = list(range(1, len(answer) + 1, 4))
        keep = len(ends) - (total - max_length)
        if keep < 4:
            return None
        answer = answer[: ends[keep - 1]].rstrip()
        chat = [*chat[:-1], {"role": "assistant", "content": answer}]
    return None
