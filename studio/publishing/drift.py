"""Drift: how far the published model's replies are from the replies of the model the expert used in Chat.

On a GPU a QLoRA run is chatted with as its 4-bit base + adapter, while the merged export holds 16-bit
weights: the same prompts get slightly different greedy replies. Per reply: token agreement (difflib's ratio
over the token ids, 2 x matching / total: 1.0 identical, 0.0 nothing in common) and the first position where
the two differ (None: identical). Pure functions; verify.py asks the endpoint and calls them.

What counts as passed, per what is served:
- the same weights as in Chat (the same precision: the CPU, a LoRA run served 16-bit as chatted): exact, every
  reply must equal the Chat reply;
- another precision than in Chat (a 4-bit Chat, a 16-bit merged export): the served model must answer exactly
  like the export's own weights (so it is served right), and its replies must stay within DRIFT_TOLERANCE of
  the Chat replies: every reply ends and the mean token agreement is at least DRIFT_MIN_AGREEMENT.
"""

from __future__ import annotations

import difflib
from typing import Any

# Across precisions, greedy replies part at the first token where 4-bit rounding tips the choice and usually
# resynchronise later; 0.70 mean agreement leaves room for that while catching a model that says other things.
DRIFT_MIN_AGREEMENT = 0.70
DRIFT_TOLERANCE = (f"every reply ends, and on average at least {DRIFT_MIN_AGREEMENT:.0%} of each reply's tokens "
                   f"are the same as in the reply given in Chat")


def token_drift(reference: list[int], served: list[int]) -> dict[str, Any]:
    """Agreement and the first differing position of two token sequences."""
    if reference == served:
        return {"agreement": 1.0, "first_difference": None, "reference_tokens": len(reference),
                "served_tokens": len(served)}
    first = next((i for i, (a, b) in enumerate(zip(reference, served, strict=False)) if a != b),
                 min(len(reference), len(served)))
    ratio = difflib.SequenceMatcher(a=reference, b=served, autojunk=False).ratio()
    return {"agreement": round(ratio, 4), "first_difference": first, "reference_tokens": len(reference),
            "served_tokens": len(served)}


def same_weights(reference: dict[str, Any]) -> bool:
    """Whether the export holds the weights the expert chatted with (the same precision, no 4-bit in Chat)."""
    chat = reference.get("chat_precision")
    return chat is None or chat == reference.get("dtype")


def rule_text(reference: dict[str, Any]) -> str:
    chat, export = reference.get("chat_precision") or reference.get("dtype"), reference.get("dtype")
    if same_weights(reference):
        return f"exact: the served weights are the ones the Chat tab runs ({export}), so every reply must be the same"
    return (f"across precisions (Chat: {chat}, export: {export}): the served model must answer exactly like the "
            f"export's weights, and {DRIFT_TOLERANCE}")


def compared_with(reference: dict[str, Any]) -> str:
    """What the drift is measured against, truthfully: the replies export_worker.record_chat_replies records,
    at export time, from the model as the Chat tab runs it, to these same prompts; not the expert's chats."""
    chat = reference.get("chat_precision") or reference.get("dtype") or "its precision"
    model = (f"the studio's own model ({chat}, as the Chat tab runs it)" if same_weights(reference)
             else f"the model as the Chat tab runs it ({chat})")
    return (f"the replies {model} gives to these same prompts, recorded at export (not the replies in your "
            "Chat conversations)")


def drift_report(pairs: list[tuple[list[int], list[int], bool]]) -> dict[str, Any]:
    """(Chat reply ids, served reply ids, served reply ended) per prompt -> the report and whether it is
    within the tolerance."""
    per = [token_drift(chat, served) for chat, served, _ in pairs]
    if not per:
        return {"prompts": 0, "identical": 0, "mean_agreement": None, "min_agreement": None,
                "first_difference": None, "within_tolerance": True, "items": []}
    mean = sum(d["agreement"] for d in per) / len(per)
    firsts = [d["first_difference"] for d in per if d["first_difference"] is not None]
    return {
        "prompts": len(per),
        "identical": sum(d["first_difference"] is None for d in per),
        "mean_agreement": round(mean, 4),
        "min_agreement": min(d["agreement"] for d in per),
        "first_difference": min(firsts) if firsts else None,
        "within_tolerance": mean >= DRIFT_MIN_AGREEMENT and all(ended for _, _, ended in pairs),
        "items": per,
    }


def describe(report: dict[str, Any]) -> str:
    """One line for the summary and the Publish tab."""
    if not report.get("prompts"):
        return "Drift from the Chat model: nothing to compare."
    unit = report.get("unit", "tokens").removesuffix("s")
    against = report.get("compared") or "the Chat model's replies to these prompts"
    if report["identical"] == report["prompts"]:
        return (f"Drift from the Chat model: none — all {report['prompts']} replies are {unit} for {unit} "
                f"{against}.")
    return (f"Drift from the Chat model: {report['identical']} of {report['prompts']} replies identical to "
            f"{against}; mean {unit} agreement {report['mean_agreement']:.2f} (lowest "
            f"{report['min_agreement']:.2f}); the earliest difference at {unit} {report['first_difference']}.")


def _without_eos(ids: list[int], eos: list[int]) -> list[int]:
    """A trailing end-of-sequence id one side reports and the other not is no difference."""
    return list(ids[:-1] if ids and ids[-1] in eos else ids)


def _tokenizer(tokenizer_dir: str | None):
    if not tokenizer_dir:
        return None
    try:
        from studio.core.imports import heavy_imports

        with heavy_imports():
            from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError):  # no tokenizer files: words stand in for tokens
        return None
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def attach_drift(result: dict[str, Any], reference: dict[str, Any], tokenizer_dir: str | None) -> dict[str, Any]:
    """Add the drift from the Chat replies, the rule that applies and where the prompts came from to a
    verification result; across precisions a drift beyond the tolerance makes a pass a pass with differences."""
    eos = list(reference.get("eos_ids") or [])
    tokenize = _tokenizer(tokenizer_dir)
    pairs = []
    for ref, item in zip(reference.get("prompts", []), result["items"], strict=False):
        chat = ref.get("chat") or ref["tuned"]
        served_ids = (item.get("token_ids") or {}).get("endpoint")
        if served_ids is not None and chat.get("ids") is not None:  # the server's own ids: compare as they are
            pair = (_without_eos(chat["ids"], eos), _without_eos(served_ids, eos))
        else:  # both texts tokenized the same way (words without a tokenizer): equal texts, equal ids
            split = tokenize or str.split
            pair = (split(chat["text"].strip()), split(item["endpoint"].strip()))
        pairs.append((*pair, item["endpoint_finish"] not in ("length", "", "error")))
        item["chat"] = chat["text"]
    report = drift_report(pairs)
    for item, one in zip(result["items"], report["items"], strict=False):
        item["drift"] = one
    report["compared"] = compared_with(reference)
    report["unit"] = "tokens" if tokenize is not None or all((i.get("token_ids") or {}).get("endpoint") is not None
                                                             for i in result["items"]) else "words"
    exact = same_weights(reference)
    result.update(drift=report, rule=rule_text(reference), same_weights=exact,
                  chat_precision=reference.get("chat_precision") or reference.get("dtype"),
                  export_precision=reference.get("dtype"), prompts_from=reference.get("prompts_from"))
    if result["items"]:
        result["summary"] += " " + describe(report)
    if not exact and result["verdict"] == "passed" and not report["within_tolerance"]:
        result["verdict"] = "passed_with_differences"
        result["summary"] += f" Beyond the tolerance across precisions ({DRIFT_TOLERANCE})."
    return result
