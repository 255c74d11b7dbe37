"""Preference and KTO files: prompt + chosen/rejected answers (DPO, ORPO), or prompt + completion + good/bad
label (KTO), with the same guarantees as question/answer data: mapping guessed and shown, both answers
previewed with the model's template, token-true checks, rejected rows with their reasons, a saved version.

The prompt comes from the usual roles (instruction [+ input], or a `messages` chat ending with the user's
turn; system column or fixed system prompt); the answers from `chosen`/`rejected`, or `output` + `label`.
Rows are stored in TRL's conversational layout (studio.data.kinds).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from studio.core.errors import InvalidInput
from studio.data.mapping import USER_INPUT_SEPARATOR, MappingGuess, _as_messages, _normalise_chat, _rank

if TYPE_CHECKING:
    from studio.data.table import SourceTable

PAIR_ROLES = ("chosen", "rejected")
SYNONYMS = {
    "chosen": ["chosen", "preferred", "better", "better answer", "good answer", "winner", "accepted"],
    "rejected": ["rejected", "dispreferred", "worse", "worse answer", "bad answer", "loser"],
    "label": ["label", "liked", "thumbs", "thumb", "good", "desirable", "feedback"],
    "output": ["completion", "output", "response", "answer", "reply"],
    "instruction": ["prompt", "question", "instruction", "query", "user"],
    "input": ["context", "input", "document"],
    "system": ["system", "system prompt"],
}
GOOD = {"true", "1", "yes", "y", "good", "up", "thumbs up", "liked", "like", "desirable", "👍", "+", "+1"}
BAD = {"false", "0", "no", "n", "bad", "down", "thumbs down", "disliked", "dislike", "undesirable", "👎", "-", "-1"}


def kind_of_mapping(mapping: dict[str, Any]) -> str:
    if any(mapping.get(r) for r in PAIR_ROLES):
        return "preference"
    return "kto" if mapping.get("label") else "sft"


def guess(table: SourceTable) -> MappingGuess | None:
    """A preference or KTO mapping when the columns say so (chosen + rejected, or a label); else None."""
    mapping, reasons = {}, {}
    for role in ("chosen", "rejected", "label", "output", "instruction", "input", "system"):
        for column in table.columns:
            if column in mapping.values():
                continue
            hit = next((syn for syn in SYNONYMS[role] if _rank(column, syn) in (0, 1)), None)
            if hit:
                mapping[role], reasons[role] = column, f"'{column}': the name matches '{hit}'"
                break
    pairs = "chosen" in mapping and "rejected" in mapping
    if not pairs and not ("label" in mapping and "output" in mapping):
        return None
    keep = PAIR_ROLES if pairs else ("output", "label")
    chat = next((c for c in table.columns if c not in mapping.values() and _is_chat(table, c)), None)
    prompt_roles = ("messages",) if chat and "instruction" not in mapping else ("instruction", "input")
    if chat and "instruction" not in mapping:
        mapping["messages"], reasons["messages"] = chat, f"'{chat}' holds the chat before the answers"
    mapping = {r: c for r, c in mapping.items() if r in (*keep, *prompt_roles, "system")}
    notes = [] if ("instruction" in mapping or "messages" in mapping) else [
        "No column looks like the prompt; choose it by hand."]
    return MappingGuess(mapping=mapping, confident=not notes, reasons={r: reasons[r] for r in mapping}, notes=notes)


def _is_chat(table: SourceTable, column: str) -> bool:
    values = [v for v in table.frame[column].head(20) if v not in ("", None)]
    return bool(values) and all(_as_messages(v) is not None for v in values)


def check_mapping(table: SourceTable, mapping: dict[str, str | None]) -> dict[str, str]:
    clean = {role: col for role, col in (mapping or {}).items() if col}
    columns = ", ".join(repr(c) for c in table.columns)
    for role, column in clean.items():
        if column not in table.columns:
            raise InvalidInput(f"The file has no column '{column}' (for {role}).", f"Its columns are: {columns}.")
    if kind_of_mapping(clean) == "preference" and not all(r in clean for r in PAIR_ROLES):
        raise InvalidInput("A preference file needs both a chosen and a rejected answer column.",
                           f"Pick both among: {columns}.")
    if kind_of_mapping(clean) == "kto" and "output" not in clean:
        raise InvalidInput("A KTO file needs the answer (output/completion) next to its good/bad label.",
                           f"Pick the answer column among: {columns}.")
    if "messages" not in clean and "instruction" not in clean:
        raise InvalidInput("No column is chosen for the prompt.",
                           f"Pick the question (instruction) or a chat (messages) column among: {columns}.")
    return clean


def _cell(value: Any) -> str:
    """An answer cell: text, or a chat (its last assistant message, e.g. a whole conversation per answer)."""
    chat = _as_messages(value)
    if chat is not None:
        answers = [m.get("content", m.get("value")) for m in chat
                   if str(m.get("role", m.get("from", ""))).lower() in ("assistant", "gpt", "bot", "model")]
        return str(answers[-1] if answers else "").strip()
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def _label(value: Any) -> bool | None:
    text = str(value).strip().lower()
    return True if text in GOOD else False if text in BAD else None


def build_rows(table: SourceTable, mapping: dict[str, str], system_prompt: str) -> tuple[list[dict], list[tuple]]:
    """(rows with their source index under "_i", rejected as (index, check, reason))."""
    frame, kind = table.frame, kind_of_mapping(mapping)
    rows, rejected = [], []
    for i in range(len(frame)):
        own_system = _cell(frame[mapping["system"]].iloc[i]) if "system" in mapping else ""
        system = own_system or (system_prompt or "").strip()
        if "messages" in mapping:
            raw = _as_messages(frame[mapping["messages"]].iloc[i])
            if raw is not None and str(raw[-1].get("role", raw[-1].get("from", ""))).lower() in ("user", "human"):
                raw = [*raw, {"role": "assistant", "content": "x"}]  # checked as a chat, the answer dropped
            chat, why = _normalise_chat(raw, system) if raw is not None else (None, "not a list of messages")
            if chat is None:
                rejected.append((i, "not a usable chat", why))
                continue
            prompt = chat[:-1]
        else:
            question = _cell(frame[mapping["instruction"]].iloc[i])
            context = _cell(frame[mapping["input"]].iloc[i]) if "input" in mapping else ""
            if not question:
                rejected.append((i, "empty question", "the prompt is empty"))
                continue
            user = question + (USER_INPUT_SEPARATOR + context if context else "")
            prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        if kind == "preference":
            chosen, rejected_answer = (_cell(frame[mapping[r]].iloc[i]) for r in PAIR_ROLES)
            if not chosen or not rejected_answer:
                rejected.append((i, "empty answer", f"the {'chosen' if not chosen else 'rejected'} answer is empty"))
                continue
            if chosen == rejected_answer:
                rejected.append((i, "chosen same as rejected", "the chosen and rejected answers are the same"))
                continue
            rows.append({"_i": i, "prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected_answer}]})
        else:
            answer, label = _cell(frame[mapping["output"]].iloc[i]), _label(frame[mapping["label"]].iloc[i])
            if not answer:
                rejected.append((i, "empty answer", "the answer is empty"))
                continue
            if label is None:
                rejected.append((i, "label not good or bad",
                                 f"label {frame[mapping['label']].iloc[i]!r} is not good/bad (true/false, 1/0, 👍/👎)"))
                continue
            rows.append({"_i": i, "prompt": prompt, "completion": [{"role": "assistant", "content": answer}],
                         "label": label})
    return rows, rejected


def answers_of(row: dict) -> list[tuple[str, list[dict]]]:
    if "chosen" in row:
        return [("chosen", row["chosen"]), ("rejected", row["rejected"])]
    return [("good" if row["label"] else "bad", row["completion"])]


def _truncated(tokenizer: Any, row: dict, max_length: int) -> tuple[dict | None, str]:
    """The row with each answer cut (at a token boundary) so prompt + answer fits max_length (the `truncate`
    policy), or (None, why) when the prompt leaves no room or the cut answers become the same."""
    from studio.data.render import truncate_chat

    row = dict(row)
    for key in PAIR_ROLES if "chosen" in row else ("completion",):
        limit = max_length
        for _ in range(3):  # counted again as the trainer will count it; cut a little more if it still overflows
            cut = truncate_chat(tokenizer, row["prompt"] + row[key], limit)
            if cut is None:
                return None, f"the prompt leaves no room for an answer within max length {max_length} tokens"
            length = len(tokenizer.apply_chat_template(cut[0], tokenize=True, return_dict=False))
            if length <= max_length:
                row[key] = cut[0][len(row["prompt"]):]
                break
            limit -= length - max_length
        else:
            return None, f"the answer could not be cut to max length {max_length} tokens"
    if "chosen" in row and row["chosen"][0]["content"] == row["rejected"][0]["content"]:
        return None, "cut to the max length, the chosen and rejected answers are the same"
    return row, ""


def prepare(table: SourceTable, mapping: dict[str, str], tokenizer: Any, *, template: str, max_length: int,
            base_model: str, model_context: int | None, seed: int, preview_rows: int, **options: Any) -> dict:
    """importer.prepare for preference/KTO rows: render, count, check, split; nothing is written. Returns the
    fields of an importer.Prepared."""
    import pandas as pd

    from studio.data.render import preview_tokens
    from studio.data.report import check_entry, histogram, token_stats
    from studio.data.split import Outcome

    mapping = check_mapping(table, mapping)
    kind = kind_of_mapping(mapping)
    rows, rejected = build_rows(table, mapping, options.get("system_prompt") or "")
    seen, kept, tokens, answer_tokens = set(), [], [], []
    duplicates, truncated = [], []
    for row in rows:
        key = json.dumps({k: v for k, v in row.items() if k != "_i"}, sort_keys=True, ensure_ascii=False)
        if key in seen:
            duplicates.append(row["_i"])
            continue
        seen.add(key)
        prompt_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        lengths = [len(tokenizer.apply_chat_template(row["prompt"] + a, tokenize=True, return_dict=False))
                   for _, a in answers_of(row)]
        tokens.append(max(lengths))
        answer_tokens.append(max(lengths) - len(prompt_ids))
        if max(lengths) > max_length:
            cut, why = (_truncated(tokenizer, row, max_length) if options.get("length_policy", "drop") == "truncate"
                        else (None, f"{max(lengths)} tokens (prompt and longest answer) > max length {max_length}"))
            if cut is None:
                rejected.append((row["_i"], "too long" if "chosen and rejected" not in why
                                 else "chosen same as rejected", why))
                continue
            truncated.append(row["_i"])
            row = cut
        kept.append(row)
    counted = np.asarray(tokens, dtype=np.int64)
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(kept))
    size = options.get("val_size")
    n_val = int(size) if size is not None else int(round(len(kept) * float(options.get("val_fraction", 0.1))))
    n_val = min(n_val, max(len(kept) - 1, 0))
    val_index, train_index = sorted(order[:n_val]), sorted(order[n_val:])
    train, val = [kept[i] for i in train_index], [kept[i] for i in val_index]
    label = table.row_label
    reasons: dict[str, list[int]] = {}
    for i, check, _ in rejected:
        reasons.setdefault(check, []).append(int(table.rows[i]))
    checks = [check_entry(name, "rejected", numbers, label) for name, numbers in reasons.items()]
    if duplicates:
        checks.append(check_entry("exact duplicate", "dropped", [int(table.rows[i]) for i in duplicates], label))
    if truncated:
        checks.append(check_entry("too long", "truncated", [int(table.rows[i]) for i in truncated], label))
    report = {
        "kind": kind, "source": table.describe(), "validation_source": f"{n_val} rows drawn with seed {seed}",
        "mapping": mapping,
        "system_prompt": (options.get("system_prompt") or "").strip(), "base_model": base_model,
        "template": template, "max_length": max_length, "length_policy": options.get("length_policy", "drop"),
        "seed": seed, "rows_in": len(table.frame), "rows_train": len(train),
        "rows_val": len(val), "rows_rejected": len(rejected), "rows_truncated": len(truncated),
        "tokens": token_stats(counted), "answer_tokens": token_stats(np.asarray(answer_tokens, dtype=np.int64)),
        "histogram": histogram(counted, max_length), "rows_over_max_length": int((counted > max_length).sum()),
        "checks": checks, "model_context": model_context,
    }
    previews = []
    for row in train[:preview_rows]:
        for which, answer in answers_of(row):
            previews.append({"row": int(table.rows[row["_i"]]), "row_label": f"{which} answer, {label}",
                             **preview_tokens(tokenizer, row["prompt"] + answer)})
    columns = [c for c in ("prompt", "chosen", "rejected", "completion", "label") if c in (train or val or [{}])[0]]
    strip = [{c: r[c] for c in columns} for r in train], [{c: r[c] for c in columns} for r in val]
    template_text = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else json.dumps(
        tokenizer.chat_template)
    digest = hashlib.sha256(json.dumps([kind, base_model, template_text, max_length, *strip],
                                       ensure_ascii=False).encode()).hexdigest()
    fields = {"source_name": table.name, "source_format": table.format, "base_model": base_model,
              "template": template, "mapping": mapping, "system_prompt": report["system_prompt"],
              "max_length": max_length, "rows_rejected": len(rejected), "report": report}
    outcome = Outcome()
    outcome.add_unreadable("data", table)
    outcome.add_rejected("data", table, [(i, reason) for i, _, reason in rejected])
    frame = outcome.rejected_frame()
    return dict(
        name=(options.get("name") or "").strip() or table.name.rsplit(".", 1)[0] or "preferences",
        train=strip[0], val=strip[1], report=report, rejected=frame if len(frame) else pd.DataFrame(),
        previews=previews, content_hash=digest, fields=fields, template_text=template_text, kind=kind,
    )
