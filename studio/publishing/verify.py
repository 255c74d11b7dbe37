"""Verification: the published endpoint must answer the verification prompts exactly like the studio
model did (greedy), and its replies must end. When it does not, say why: the adapter is not applied,
the server renders another chat template, it does not stop at the end-of-turn token, or its token
limits cut the exchange short.

The studio model's replies (tuned and base) were recorded by the export process in reference.json;
here only HTTP happens, through huggingface_hub.InferenceClient like every other client of the studio.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studio.core.db import now

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.publishing.source import RunSource

FAILING_CAUSES = ("adapter", "template", "eos", "truncation", "no_eos", "error")
CAUSE_TEXT = {
    "adapter": "the adapter is not applied: the endpoint answers like the base model (TGI silently falls back "
               "to the base model for an adapter name it does not know)",
    "template": "the chat template differs: with the prompt rendered by the training template the endpoint "
                "answers like the studio, through its own chat endpoint it does not",
    "eos": "the endpoint does not stop where the studio model stops: its end-of-sequence ids "
           "(generation_config.json) miss the chat template's end-of-turn token",
    "truncation": "the server's token limits cut the exchange short (max input/total tokens are too small "
                  "for this data)",
    "no_eos": "the studio model itself does not stop within the token budget: train longer, or check that the "
              "data's answers are complete",
    "error": "the endpoint answered with an error",
    "differs": "the reply differs from the studio's (both end normally); often small numeric differences of a "
               "merged or quantized model",
}
CAUSE_FIX = {
    "adapter": "Start the server with the adapter loaded under this name (TGI: --lora-adapters NAME=/path; "
               "vLLM: --lora-modules NAME=/path), or publish the merged model.",
    "template": "Serve the exported folder's tokenizer files (tokenizer_config.json / chat_template.jinja) "
                "with the model, or publish the merged export, which carries them.",
    "eos": "Serve the exported generation_config.json, which lists the end-of-turn token among its EOS ids.",
    "truncation": "Restart the server with larger --max-input-tokens / --max-total-tokens (the Publish tab "
                  "derives them from the data).",
    "no_eos": "Train longer or with more epochs, then publish again.",
    "error": "Check the server's log.",
}


@dataclass(frozen=True)
class Served:
    """How to talk to what a target published."""

    url: str  # the server's root (TGI: where /generate and /v1/chat/completions live)
    model: str | None = None  # the chat `model` field; the adapter name for base + adapter
    adapter_id: str | None = None  # TGI /generate adapter_id; None for a merged model
    api_key: str | None = None
    max_total_tokens: int | None = None
    token_ids: bool = False  # the server returns its reply's token ids (vLLM: return_token_ids)


GOLDEN_PROMPTS = 8  # the expert's own questions: up to this many are asked (validation rows: 3)


def verification_set(ws: Workspace, source: RunSource, n: int = 3) -> tuple[list[list[dict]], list[str], dict]:
    """(prompts, expected answers, where they come from). The golden set the run was last evaluated on,
    asked with the dataset's system prompt as the evaluation asked it; without one, a few validation rows."""
    from studio.evaluation.golden import run_golden_set

    found = run_golden_set(ws, source.run_id)
    if found:
        origin, items = found
        system = dataset_system_prompt(ws, source.dataset_id)
        context = [{"role": "system", "content": system}] if system else []
        chosen = items[:GOLDEN_PROMPTS]
        prompts = [[*(i.context or context), {"role": "user", "content": i.question}] for i in chosen]
        origin = {**origin, "system_prompt": system, "asked": len(chosen), "of": len(items),
                  "items": [{"question": i.question, "reference": i.reference} for i in chosen]}
        return prompts, [i.reference for i in chosen], origin
    from studio.data.store import load_split

    prompts, expected = [], []
    for split in ("val", "train"):
        if len(prompts) >= n or not source.dataset_id:
            break
        for row in load_split(ws, source.dataset_id, split).select_columns(["messages"]).to_list():
            messages = [dict(role=m["role"], content=m["content"]) for m in row["messages"]]
            if len(messages) >= 2 and messages[-1]["role"] == "assistant":
                prompts.append(messages[:-1])
                expected.append(messages[-1]["content"])
            if len(prompts) >= n:
                break
    return prompts, expected, {"kind": "validation", "dataset": source.dataset_id, "asked": len(prompts)}


def verification_prompts(ws: Workspace, source: RunSource, n: int = 3) -> tuple[list[list[dict]], list[str]]:
    """The prompts and expected answers of verification_set, without where they come from."""
    prompts, expected, _ = verification_set(ws, source, n)
    return prompts, expected


def dataset_system_prompt(ws: Workspace, dataset_id: str | None) -> str:
    """The system prompt the dataset version was saved with; empty when it has none or is gone."""
    from studio.core.errors import NotFound
    from studio.data.store import get_version

    try:
        return (get_version(ws, dataset_id).system_prompt or "") if dataset_id else ""
    except NotFound:
        return ""


def word_diff(studio: str, endpoint: str) -> str:
    """An inline word diff: [-only in the studio's reply-] {+only in the endpoint's+}."""
    a, b = studio.split(), endpoint.split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(" ".join(a[i1:i2]))
        if op in ("delete", "replace"):
            out.append("[-" + " ".join(a[i1:i2]) + "-]")
        if op in ("insert", "replace"):
            out.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(out)


def transport_errors() -> tuple[type[Exception], ...]:
    """Connection-level failures: httpx's (our own calls) and httpx2's (huggingface_hub 2.x uses it)."""
    import httpx

    errors: tuple[type[Exception], ...] = (httpx.HTTPError,)
    try:
        import httpx2

        errors += (httpx2.HTTPError,)
    except ImportError:  # an older huggingface_hub talks through httpx
        pass
    return errors


def _norm(text: str | None) -> str:
    return " ".join((text or "").split())


def _client(served: Served, timeout: float):
    from huggingface_hub import InferenceClient

    return InferenceClient(base_url=served.url.rstrip("/"), api_key=served.api_key, timeout=timeout)


def ask_chat(served: Served, messages: list[dict], max_tokens: int, timeout: float = 120) -> tuple[str, str]:
    """Greedy reply through /v1/chat/completions: (text, finish_reason)."""
    text, finish, _ = ask_chat_ids(served, messages, max_tokens, timeout)
    return text, finish


def ask_chat_ids(served: Served, messages: list[dict], max_tokens: int,
                 timeout: float = 120) -> tuple[str, str, list[int] | None]:
    """(text, finish_reason, the reply's token ids when the server returns them, else None)."""
    extra = {"extra_body": {"return_token_ids": True}} if served.token_ids else {}
    out = _client(served, timeout).chat_completion(
        messages, model=served.model, max_tokens=max_tokens, temperature=0, seed=0, **extra
    )
    choice = out.choices[0]
    ids = choice.get("token_ids") if served.token_ids else None
    return choice.message.content or "", str(choice.finish_reason or ""), ids


def ask_raw(served: Served, prompt: str, max_tokens: int, timeout: float = 120) -> tuple[str, str] | None:
    """Greedy reply to a prompt rendered by the training template (TGI /generate, else /v1/completions);
    None when the server offers neither."""
    import httpx
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    try:
        client = InferenceClient(model=served.url.rstrip("/") + "/generate", api_key=served.api_key,
                                 timeout=timeout)
        out = client.text_generation(prompt, max_new_tokens=max_tokens, do_sample=False, details=True,
                                     adapter_id=served.adapter_id)
        return out.generated_text, str(out.details.finish_reason)
    except HfHubHTTPError as exc:
        if exc.response is None or exc.response.status_code not in (404, 405):
            raise
    headers = {"Authorization": f"Bearer {served.api_key}"} if served.api_key else {}
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if served.model:
        body["model"] = served.model
    response = httpx.post(served.url.rstrip("/") + "/v1/completions", json=body, headers=headers, timeout=timeout)
    if response.status_code in (404, 405):
        return None
    response.raise_for_status()
    choice = response.json()["choices"][0]
    return choice.get("text", ""), str(choice.get("finish_reason") or "")


def _same_ids(studio: list[int], endpoint: list[int], eos: list[int]) -> bool:
    """Equal token ids; a trailing end-of-sequence id one side reports and the other not is no difference."""
    def strip(ids: list[int]) -> list[int]:
        return ids[:-1] if ids and ids[-1] in eos else ids
    return studio == endpoint or strip(list(studio)) == strip(list(endpoint))


def _ended(finish: str) -> bool:
    return finish not in ("length", "")


def check_item(served: Served, ref: dict, budget: int, eos: list[int] | None = None) -> dict[str, Any]:
    """One prompt: ask the endpoint, compare with the studio's reply, find the cause of a difference."""
    from huggingface_hub.errors import HfHubHTTPError

    tuned, base = ref["tuned"], ref["base"]
    question = next((m["content"] for m in reversed(ref["messages"]) if m["role"] == "user"), "")
    item: dict[str, Any] = {"prompt": question, "studio": tuned["text"], "studio_finish": tuned["finish"],
                            "base": base["text"], "endpoint": "", "endpoint_finish": "", "match": False,
                            "cause": None, "diff": ""}
    try:
        text, finish, ids = ask_chat_ids(served, ref["messages"], budget)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        detail = (getattr(exc, "server_message", None) or str(exc).splitlines()[0])[:300]
        item.update(endpoint=f"(error {status}: {detail})", endpoint_finish="error",
                    cause="truncation" if status == 422 and "token" in detail.lower() else "error")
        return item
    except transport_errors() as exc:
        item.update(endpoint=f"(no answer: {type(exc).__name__}: {exc})", endpoint_finish="error", cause="error")
        return item
    item.update(endpoint=text, endpoint_finish=finish)
    same = _norm(text) == _norm(tuned["text"])
    if ids is not None and tuned.get("ids") is not None:  # token ids: exact (text may hold back a byte)
        item["token_ids"] = {"studio": tuned["ids"], "endpoint": ids}
        same = _same_ids(tuned["ids"], ids, eos=eos or [])
    if same and (_ended(finish) or tuned["finish"] == "length"):
        item["match"] = True
        if tuned["finish"] == "length":
            item["cause"] = "no_eos"
        return item
    item["diff"] = word_diff(tuned["text"], text)
    adapter_changes_reply = _norm(tuned["text"]) != _norm(base["text"])
    raw = None
    if not same:
        try:
            raw = ask_raw(served, ref["prompt_text"], budget)
        except (HfHubHTTPError, *transport_errors(), ValueError, KeyError):
            raw = None  # the diagnosis goes on without the raw-prompt reply
    if raw is not None:
        item["endpoint_raw"] = raw[0]
    if adapter_changes_reply and (_norm(text) == _norm(base["text"])
                                  or (raw is not None and _norm(raw[0]) == _norm(base["text"]))):
        item["cause"] = "adapter"
    elif raw is not None and not same and _norm(raw[0]) == _norm(tuned["text"]):
        item["cause"] = "template"
    elif tuned["finish"] == "eos" and not _ended(finish):
        if served.max_total_tokens and ref["prompt_tokens"] + budget > served.max_total_tokens:
            item["cause"] = "truncation"
        elif _norm(text).startswith(_norm(tuned["text"])):
            item["cause"] = "eos"
        elif _norm(tuned["text"]).startswith(_norm(text)):
            item["cause"] = "truncation"
        else:
            item["cause"] = "eos"
    elif tuned["finish"] == "length":
        item["cause"] = "no_eos"
    else:
        item["cause"] = "differs"
    return item


def verify(served: Served, reference: dict[str, Any], tokenizer_dir: str | None = None) -> dict[str, Any]:
    """Run every reference prompt through the endpoint; the verdict, its causes and each item, and the drift
    from the replies chatted with (publishing/drift.py: the pass rule per precision). tokenizer_dir: the
    export's tokenizer, to count the drift in tokens when the server returns text only."""
    budget = int(reference.get("max_new_tokens") or 128)
    items = [check_item(served, ref, budget, reference.get("eos_ids")) for ref in reference.get("prompts", [])]
    causes = sorted({i["cause"] for i in items if i["cause"]}, key=lambda c: list(CAUSE_TEXT).index(c))
    failing = [c for c in causes if c in FAILING_CAUSES]
    matched = sum(1 for i in items if i["match"])
    if not items:
        verdict = "failed"
        summary = "No verification prompts: the run's data version has no rows to ask with."
    elif failing:
        verdict = "failed"
        summary = f"Failed ({matched} of {len(items)} replies match the studio's). " + " ".join(
            f"{CAUSE_TEXT[c][0].upper()}{CAUSE_TEXT[c][1:]}. {CAUSE_FIX.get(c, '')}" for c in failing
        )
    elif matched < len(items):
        verdict = "passed_with_differences"
        summary = (f"Every reply ends, {matched} of {len(items)} match the studio's; the others differ "
                   f"(see the diffs): {CAUSE_TEXT['differs']}.")
    else:
        verdict = "passed"
        summary = (f"The served model answers exactly as the studio's model does: all {len(items)} replies are "
                   f"the same and end normally. This checks the serving, not the answers' quality: the Evaluate "
                   f"tab scores the answers against yours.")
    result = {"verdict": verdict, "healthy": verdict != "failed", "summary": summary, "causes": causes,
              "matched": matched, "total": len(items), "max_new_tokens": budget, "url": served.url,
              "model": served.model, "checked_at": now(), "items": items}
    from studio.publishing.drift import attach_drift

    return attach_drift(result, reference, tokenizer_dir)


def format_verification(result: dict[str, Any]) -> str:
    """Plain text for the CLI and the Publish tab."""
    lines = [f"Verification: {result['verdict'].replace('_', ' ')} — {result['summary']}"]
    for n, item in enumerate(result.get("items", []), 1):
        mark = "=" if item["match"] else "≠"
        lines.append(f"  {n}. {mark} {item['prompt'][:80]!r}")
        if not item["match"]:
            lines.append(f"     studio   ({item['studio_finish']}): {item['studio'][:200]!r}")
            lines.append(f"     endpoint ({item['endpoint_finish']}): {item['endpoint'][:200]!r}")
            if item.get("cause"):
                lines.append(f"     cause: {item['cause']}")
            if item.get("diff"):
                lines.append(f"     diff: {item['diff'][:300]}")
    return "\n".join(lines)
