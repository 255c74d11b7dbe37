"""Column mapping: which column is the question, the context, the answer, the system prompt or a chat.

`guess_mapping` proposes a mapping that the UI and the CLI always show before it is used: exact names
first, then whole words ("Customer question"), then typos; a column named `context` is never `text`.
`build_conversations` turns the mapped rows into chat conversations (system?, user, assistant, ...).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from studio.core.errors import InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa

    from studio.data.table import SourceTable

ROLES = ("instruction", "input", "output", "system", "messages", "chosen", "rejected", "label")
ROLE_HELP = {
    "chosen": "preference data: the better answer (DPO/ORPO); map rejected too",
    "rejected": "preference data: the worse answer to the same prompt",
    "label": "KTO data: good/bad (true/false, 1/0, 👍/👎) for the answer in output",
    "instruction": "the question or instruction (what the user asks)",
    "input": "optional context added after the question (a document, a case note)",
    "output": "the answer the model should learn to give",
    "system": "optional per-row system prompt (how the assistant should behave)",
    "messages": "a whole chat per row: a list of {role, content} messages",
}
SYNONYMS: dict[str, list[str]] = {
    "messages": ["messages", "conversation", "conversations", "chat", "chats", "dialog", "dialogue", "turns"],
    "output": ["output", "response", "answer", "completion", "reply", "assistant", "target", "a", "gpt", "bot",
               "resolution", "solution", "expected output", "agent reply",
               # the spreadsheets of experts who work in German, French, Spanish, Portuguese, Italian, Dutch
               "antwort", "réponse", "reponse", "respuesta", "resposta", "risposta", "antwoord", "lösung"],
    "instruction": ["instruction", "prompt", "question", "query", "user", "request", "human", "q", "ask", "task",
                    "user message", "customer message", "text",
                    "frage", "anfrage", "pregunta", "consulta", "pergunta", "domanda", "vraag"],
    "input": ["input", "context", "background", "passage", "document", "details", "case", "history",
              "kontext", "contexte", "contexto", "contesto"],
    "system": ["system", "system prompt", "system message", "persona"],
}
# words that make a name about the text rather than the text itself: "question_id", "answer date"
_NOT_TEXT = {"id", "ids", "no", "number", "num", "date", "time", "timestamp", "count", "len", "length", "type",
             "category", "score", "rating", "lang", "language", "url", "link", "status", "tag", "tags"}
_RANK_WORDS = {0: "exact name", 1: "whole word in the name", 2: "name close to"}
USER_INPUT_SEPARATOR = "\n\n"  # instruction, blank line, then the input/context


def message_type():
    """The Arrow type of a chat column: list<struct<role, content>>."""
    import pyarrow as pa

    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


@dataclass
class MappingGuess:
    """A proposed mapping, why each column was picked, and whether it is safe to use without asking."""

    mapping: dict[str, str]
    confident: bool
    reasons: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "confident": self.confident, "reasons": self.reasons, "notes": self.notes}


def _words(name: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(name))  # customerQuestion -> customer Question
    return re.sub(r"[\W_]+", " ", spaced.lower()).split()  # letters of any script: 'Réponse' is one word


def _rank(name: str, synonym: str) -> int | None:
    """0 exact, 1 whole word(s), 2 a close spelling; None when the name does not match."""
    words, syn = _words(name), synonym.split()
    if words == syn:
        return 0
    if len(synonym) > 1 and any(words[i:i + len(syn)] == syn for i in range(len(words) - len(syn) + 1)):
        return None if set(words) & _NOT_TEXT else 1
    joined = " ".join(words)
    if len(synonym) >= 5 and len(joined) >= 5 and difflib.SequenceMatcher(None, joined, synonym).ratio() >= 0.85:
        return 2
    return None


def _filled(table: SourceTable, column: str):
    """The column's first 200 non-empty cells, stripped; None for a column of objects (lists, not text)."""
    series = table.frame[column]
    if series.dtype == object:
        return None
    values = series.head(200).str.strip()
    return values[values != ""]


def _is_text_column(table: SourceTable, column: str) -> bool:
    """Mostly filled with words, not numbers or blanks: a question or an answer, not an id."""
    values = _filled(table, column)
    if values is None or len(values) == 0:
        return False
    numeric = values.str.fullmatch(r"[-+]?[0-9.,:/ ]+").sum()
    return numeric < 0.5 * len(values)


def _has_values(table: SourceTable, column: str) -> bool:
    values = _filled(table, column)
    return values is not None and len(values) > 0


def _messages_column(table: SourceTable) -> str | None:
    for column in table.columns:
        values = [v for v in table.frame[column].head(20) if v not in ("", None)]
        if values and all(_as_messages(v) is not None for v in values):
            return column
    return None


def guess_mapping(table: SourceTable) -> MappingGuess:
    """Propose roles for the columns; `confident` only when names matched exactly or as whole words."""
    columns = table.columns
    mapping: dict[str, str] = {}
    reasons: dict[str, str] = {}
    notes: list[str] = []
    confident = True
    chat = _messages_column(table)
    if chat is not None:
        mapping["messages"] = chat
        reasons["messages"] = f"'{chat}' holds chat conversations (lists of role/content messages)"
    taken = set(mapping.values())
    for role in ("output", "instruction", "input", "system"):
        if "messages" in mapping and role != "system":
            continue
        candidates = []
        for position, column in enumerate(columns):
            if column in taken:
                continue
            ranks = [(r, syn) for syn in SYNONYMS[role] if (r := _rank(column, syn)) is not None]
            # an answer may be a number under the role's exact name ('answer' holding amounts or doses); a
            # question never is (a column of numbers called 'question' numbers the questions)
            if ranks and (role == "system" or _is_text_column(table, column)
                          or (role == "output" and min(ranks)[0] == 0 and _has_values(table, column))):
                rank, synonym = min(ranks)
                candidates.append((rank, position, column, synonym))
        if not candidates:
            continue
        candidates.sort()
        rank, _, column, synonym = candidates[0]
        mapping[role] = column
        taken.add(column)
        reasons[role] = f"'{column}': {_RANK_WORDS[rank]} '{synonym}'"
        if rank == 2:
            confident = False
            notes.append(f"'{column}' was taken as {role} only because its name is spelled like '{synonym}': check it.")
        ties = [c for r, _, c, _ in candidates[1:] if r == rank]
        if ties:
            confident = False
            notes.append(f"{role}: '{column}' was picked, but {', '.join(repr(t) for t in ties)} matched as well.")
    if "messages" not in mapping and "instruction" not in mapping and "input" in mapping:
        mapping["instruction"] = mapping.pop("input")  # input + output only: the input is the question
        reasons["instruction"] = reasons.pop("input")
    if "messages" not in mapping and not ("instruction" in mapping and "output" in mapping):
        confident = False
        missing = [r for r in ("instruction", "output") if r not in mapping]
        if len(columns) > 1:  # with one column there is nothing to choose: too_few_columns says why
            notes.append(f"No column looks like the {' or the '.join(missing)}; choose it by hand.")
    ordered = {role: mapping[role] for role in ROLES if role in mapping}
    reasons = {role: reasons[role] for role in ROLES if role in reasons}
    return MappingGuess(mapping=ordered, confident=confident, reasons=reasons, notes=notes)


def too_few_columns(table: SourceTable) -> InvalidInput | None:
    """Why the file cannot give question/answer rows whatever the mapping: under two columns and no chat column.
    Returned, not raised, so that the Data tab can show it at upload next to a usable page."""
    if len(table.columns) >= 2 or _messages_column(table) is not None:
        return None
    return _too_few_columns(table)


def _too_few_columns(table: SourceTable) -> InvalidInput:
    has = f"only one column ('{table.columns[0]}')" if table.columns else "no columns"
    return InvalidInput(f"'{table.name}' has {has}; a dataset needs a question column and an answer column.",
                        "Add the answers as a second column (one question and its answer per row), or upload "
                        "whole chats as JSON lines with a 'messages' list of role/content messages per line.")


def check_mapping(table: SourceTable, mapping: dict[str, str | None]) -> dict[str, str]:
    """Validate a mapping chosen by a person or a --map flag; return it without empty roles."""
    clean = {role: col for role, col in (mapping or {}).items() if col}
    columns = ", ".join(repr(c) for c in table.columns)
    for role, column in clean.items():
        if role not in ROLES:
            raise InvalidInput(f"'{role}' is not a column role.", f"Use one of: {', '.join(ROLES)}.")
        if column not in table.columns:
            raise InvalidInput(f"The file has no column '{column}' (for {role}).", f"Its columns are: {columns}.")
    if "messages" not in clean and len(table.columns) < 2:
        raise _too_few_columns(table)
    used = [c for c in clean.values()]
    for column in set(used):
        if used.count(column) > 1:
            roles = [r for r, c in clean.items() if c == column]
            raise InvalidInput(f"Column '{column}' is mapped to {' and '.join(roles)}.",
                               "Each column can play one role only.")
    if "messages" in clean:
        extra = set(clean) - {"messages", "system"}
        if extra:
            raise InvalidInput(f"A messages column holds whole chats, so {', '.join(sorted(extra))} cannot be mapped "
                               "as well.", "Map either messages, or instruction/output (and input/system).")
    elif not ("instruction" in clean and "output" in clean):
        missing = " and ".join(r for r in ("instruction", "output") if r not in clean)
        raise InvalidInput(f"No column is chosen for the {missing}.",
                           f"Pick the question and the answer columns among: {columns}.")
    return clean


# --- rows to conversations --------------------------------------------------------------------------


@dataclass
class Conversations:
    """One chat per usable source row; `index` points back into the source table's rows."""

    messages: pa.ListArray  # list<struct<role: string, content: string>>
    index: np.ndarray
    prompt: pa.Array  # everything before the final answer, for duplicate and leakage checks
    answer: pa.Array  # the final assistant message
    question: pa.Array  # the last user message
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (source index, reason)

    def __len__(self) -> int:
        return len(self.index)

    def take_messages(self, positions: np.ndarray) -> tuple[pa.ListArray, np.ndarray]:
        """Only the chats (and their source rows) of some positions: what a split keeps."""
        import pyarrow as pa

        if len(positions) == len(self):
            return self.messages, self.index
        return self.messages.take(pa.array(positions, type=pa.int64())), self.index[positions]

    def take(self, positions: np.ndarray) -> Conversations:
        import pyarrow as pa

        if len(positions) == len(self) and (np.diff(positions) == 1).all():
            return self  # every row, in order: no copy of the strings
        idx = pa.array(positions, type=pa.int64())
        return Conversations(self.messages.take(idx), self.index[positions], self.prompt.take(idx),
                             self.answer.take(idx), self.question.take(idx))


def build_conversations(table: SourceTable, mapping: dict[str, str], system_prompt: str | None) -> Conversations:
    mapping = check_mapping(table, mapping)
    system_prompt = (system_prompt or "").strip()
    if "messages" in mapping:
        return _from_messages(table, mapping, system_prompt)
    return _from_columns(table, mapping, system_prompt)


def _text(table: SourceTable, column: str | None):
    import pyarrow as pa
    import pyarrow.compute as pc

    if column is None:
        return pa.array([""] * len(table.frame), type=pa.string())
    series = table.frame[column]
    if series.dtype == object:  # a column of lists mapped as text: use its JSON
        series = series.map(lambda v: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str))
    values = pa.array(series, type=pa.string(), from_pandas=True)
    if isinstance(values, pa.ChunkedArray):  # a big CSV arrives in blocks
        values = values.combine_chunks()
    values = values.fill_null("")
    padded = pc.match_substring_regex(values, r"^\s|\s$")  # a scan, not a copy: trim only when some cell needs it
    return pc.utf8_trim_whitespace(values) if pc.any(padded).as_py() else values


def _from_columns(table: SourceTable, mapping: dict[str, str], system_prompt: str) -> Conversations:
    """Vectorised: user = instruction [+ blank line + input], assistant = output, system = column or fixed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(table.frame)
    instruction, context = _text(table, mapping["instruction"]), _text(table, mapping.get("input"))
    has_context = pc.not_equal(context, "")
    if pc.all(has_context).as_py():
        user = pc.binary_join_element_wise(instruction, context, USER_INPUT_SEPARATOR)
    elif pc.any(has_context).as_py():
        user = pc.if_else(has_context, pc.binary_join_element_wise(instruction, context, USER_INPUT_SEPARATOR),
                          instruction)
    else:
        user = instruction
    del context
    assistant = _text(table, mapping["output"])
    system = _text(table, mapping.get("system"))
    if system_prompt:
        system = pc.if_else(pc.equal(system, ""), pa.scalar(system_prompt), system)
    has_system = pc.not_equal(system, "").to_numpy(zero_copy_only=False)
    counts = 2 + has_system.astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rows = np.arange(n, dtype=np.int64)
    # flat position of each message: [system][user][assistant] rows of one pool, taken in chat order
    take = np.empty(int(offsets[-1]), dtype=np.int64)
    starts = offsets[:-1]
    take[starts[has_system]] = rows[has_system]
    take[starts + has_system] = n + rows
    take[starts + has_system + 1] = 2 * n + rows
    roles = pa.DictionaryArray.from_arrays(
        pa.array(take // n, type=pa.int8()), pa.array(["system", "user", "assistant"])
    ).cast(pa.string())
    contents = pa.chunked_array([system, user, assistant]).take(pa.array(take))
    contents = contents.combine_chunks() if isinstance(contents, pa.ChunkedArray) else contents
    structs = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    messages = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), structs)
    # the prompt key needs the system prompt only when rows can differ in it, i.e. it comes from a column (no copy
    # of every question otherwise); decided by the mapping, so that every batch of a file keys alike
    prompt = pc.binary_join_element_wise(system, user, "\x1f") if mapping.get("system") else user
    return Conversations(messages, rows, prompt, assistant, user)


_ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
                 "model": "assistant", "system": "system"}


def _as_messages(value: Any) -> list | None:
    """A cell that holds a chat: a list of dicts with role/content (or ShareGPT's from/value)."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(m, dict) and ({"role", "content"} <= m.keys() or {"from", "value"} <= m.keys())
           for m in value):
        return value
    return None


def _normalise_chat(value: Any, system_prompt: str) -> tuple[list[dict[str, str]] | None, str]:
    """A clean [system?, user, assistant, ...] chat, or None and the reason it cannot be used."""
    chat = _as_messages(value)
    if chat is None:
        return None, "not a list of {role, content} messages"
    out = []
    for position, message in enumerate(chat, start=1):
        raw_role = str(message.get("role", message.get("from", ""))).lower()
        role = _ROLE_ALIASES.get(raw_role)
        if role is None:
            return None, f"message {position} has role '{raw_role}'; only system, user and assistant are used"
        content = message.get("content", message.get("value"))
        if isinstance(content, list):  # [{"type": "text", "text": ...}] parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            return None, f"message {position} has no text content"
        out.append({"role": role, "content": content.strip()})
    if out[0]["role"] != "system" and system_prompt:
        out.insert(0, {"role": "system", "content": system_prompt})
    turns = out[1:] if out[0]["role"] == "system" else out
    for position, message in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if message["role"] != expected:
            return None, (f"turn {position + 1} is from the {message['role']}, expected the {expected} "
                          "(a chat alternates user and assistant, after an optional system message)")
    if len(turns) < 2 or turns[-1]["role"] != "assistant":
        return None, "the chat does not end with an assistant answer"
    empty = [i for i, m in enumerate(out[:-1], start=1) if not m["content"]]
    if empty:
        return None, f"message {empty[0]} is empty"
    return out, ""


def _from_messages(table: SourceTable, mapping: dict[str, str], system_prompt: str) -> Conversations:
    import pyarrow as pa

    column = table.frame[mapping["messages"]]
    system_column = table.frame[mapping["system"]] if "system" in mapping else None
    chats, index, invalid = [], [], []
    for i, value in enumerate(column):
        own_system = str(system_column.iloc[i]).strip() if system_column is not None else ""
        chat, reason = _normalise_chat(value, own_system or system_prompt)
        if chat is None:
            invalid.append((i, reason))
            continue
        chats.append(chat)
        index.append(i)
    messages = pa.array(chats, type=message_type())
    prompt = pa.array(["\x1f".join(m["content"] for m in c[:-1]) for c in chats], type=pa.string())
    answer = pa.array([c[-1]["content"] for c in chats], type=pa.string())
    question = pa.array([c[-2]["content"] for c in chats], type=pa.string())
    return Conversations(messages, np.asarray(index, dtype=np.int64), prompt, answer, question, invalid)
