"""The Chat tab: the base model and the tuned model side by side on the same question, streaming.

Pick a finished run (its endpoint holds the base model and the run's adapter) or any registered
endpoint, local or remote. Every request goes through huggingface_hub.InferenceClient, and the
exact request is shown as curl and Python to copy. A thumbs-down with a corrected answer becomes
a training row in a new dataset version.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import gradio as gr

from studio.core.errors import StudioError
from studio.core.workspace import Workspace
from studio.evaluation import feedback
from studio.serving import chat, client, endpoints
from studio.ui.guide import guide

GUIDE = """### Chat with your tuned model beside the base model
Pick a **finished run** (or an endpoint), type a question, press **Send**: the **left** pane answers with the
model as it was before training, the **right** pane with your tuned model. If an answer is wrong, press the
thumbs-down under it, write the answer you wanted and save it: it becomes a row you can train on next time.
"""
PANES = ("left", "right")


def sources(ws: Workspace) -> list[tuple[str, str]]:
    """Finished runs with an adapter, then live or remote endpoints, as (label, value) choices."""
    from studio.training.runs import list_runs

    choices = []
    for run in list_runs(ws):
        if run.status in ("succeeded", "cancelled") and (Path(run.path) / "adapter" / "adapter_config.json").exists():
            choices.append((f"Run: {run.label}", run.id))
    for ep in endpoints.list_endpoints(ws, include_stopped=False):
        if not (ep.run_id and ep.run_id in ep.adapters):  # a run's own endpoint is listed as the run
            choices.append((f"Endpoint: {ep.name} — {ep.url} ({ep.kind})", ep.id))
    return choices


def describe(ws: Workspace, ref: str | None) -> str:
    if not ref:
        return "Pick a run or an endpoint to chat with."
    if ref.startswith("run-"):
        ep = endpoints.find_endpoint_for_run(ws, ref)
        if ep is None:
            last = next((e for e in endpoints.list_endpoints(ws) if e.run_id == ref), None)
            why = f" It was stopped: {last.error}" if last and last.error else ""
            return (f"No endpoint is running for this run yet.{why} It starts by itself on your first question "
                    "(or press **Start**); loading takes a few seconds for a small model, minutes for a big one.")
        return f"Endpoint **{ep.status}** at `{ep.url}` (base model `{ep.base_name}`, tuned adapter `{ref}`)."
    ep = endpoints.get_endpoint(ws, ref)
    return f"Endpoint **{ep.status}** at `{ep.url}` ({ep.kind}). {ep.error or ''}"


def model_choices(ws: Workspace, ref: str | None) -> tuple[list[str], str | None, str | None]:
    """The names the two panes can use, and the defaults: base on the left, tuned on the right."""
    if not ref:
        return [], None, None
    if ref.startswith("run-"):
        from studio.training.runs import get_run

        base = get_run(ws, ref).base_model
        return [base, ref], base, ref
    ep = endpoints.get_endpoint(ws, ref)
    names = [ep.base_name, *ep.adapters]
    return names, names[0], names[1] if len(names) > 1 else None


def trained_system_prompt(ws: Workspace, ref: str | None) -> tuple[str | None, str]:
    """The System prompt box for what was picked, and one sentence saying why. For a run: the system prompt
    its dataset version was saved with (empty when it has none), as Evaluate and Publish ask the model.
    For an endpoint or a server: None, the box is left as the user set it."""
    if not ref or not ref.startswith("run-"):
        return None, ""
    from studio.data.store import get_version
    from studio.training.runs import get_run

    prompt = get_version(ws, get_run(ws, ref).dataset_id).system_prompt  # a run's version cannot be deleted
    if prompt:
        return prompt, "System prompt set to the one this run was trained with."
    return "", "System prompt cleared: this run was trained without one."


def _settings(system: str, temperature: float, top_p: float, max_new: float, seed: float | None) -> chat.Settings:
    seed_value = None if seed is None or seed == "" or (isinstance(seed, float) and seed != seed) else int(seed)
    return chat.Settings(system_prompt=system or "", temperature=float(temperature), top_p=float(top_p),
                         max_new_tokens=int(max_new), seed=seed_value).check()


def _history(messages: list[dict] | None) -> list[dict]:
    return [{"role": m["role"], "content": chat.flatten(m.get("content"))} for m in messages or []]


def stream_panes(url: str, bodies: dict[str, dict], api_key: str | None = None):
    """Stream the panes' answers at the same time; yield (pane, piece or None, error or None)."""
    events: queue.Queue = queue.Queue()

    def work(pane: str, body: dict) -> None:
        try:
            for piece in client.stream_chat(url, body, api_key=api_key):
                events.put((pane, piece, None))
        except StudioError as exc:
            events.put((pane, None, exc))
        finally:
            events.put((pane, None, "done"))

    threads = [threading.Thread(target=work, args=(p, b), daemon=True) for p, b in bodies.items()]
    for thread in threads:
        thread.start()
    remaining = len(threads)
    while remaining:
        pane, piece, status = events.get()
        if status == "done":
            remaining -= 1
        else:
            yield pane, piece, status


CHAT_HEIGHT = "max(220px, calc(100vh - 560px))"  # a 1366x768 window: 220 px; 1920x1080: 520 px


def build(ws: Workspace) -> None:
    guide(GUIDE)
    target = gr.State({})
    with gr.Row():
        source = gr.Dropdown(label="Chat with", choices=sources(ws), value=None, scale=3,
                             info="A finished training run (base and tuned model side by side), or an endpoint.")
        with gr.Column(scale=0, min_width=150):
            refresh = gr.Button("Refresh list", size="sm")
            start = gr.Button("Start endpoint", size="sm")
            stop = gr.Button("Stop endpoint", size="sm")
        with gr.Column(scale=4):  # which model answers in which pane, beside what to chat with
            with gr.Row():
                left_model = gr.Dropdown(label="Left pane", allow_custom_value=True,
                                         info="Which model answers on the left (normally the base model).")
                right_model = gr.Dropdown(label="Right pane", allow_custom_value=True,
                                          info="Which model answers on the right (normally your tuned model). "
                                               "Leave empty to chat with one model only.")
    status = gr.Markdown(describe(ws, None), elem_id="chat-status")
    with gr.Accordion("Add a server by URL", open=False):
        with gr.Row():
            url = gr.Textbox(label="Server URL", placeholder="http://my-tgi-server:8080", scale=3,
                             info="A TGI, vLLM or SGLang server (OpenAI-compatible), e.g. one you published to.")
            key_env = gr.Textbox(label="API key variable (if it asks for a key)", placeholder="VLLM_API_KEY", scale=2,
                                 info="The name of the studio's environment variable that holds the key; the key "
                                      "itself is never stored.")
            add = gr.Button("Add", scale=0)
    with gr.Row():  # as tall as the window allows: the question box stays on screen on a 768-pixel laptop
        left = gr.Chatbot(label="Base model", height=CHAT_HEIGHT, elem_id="chat-left",
                          feedback_options=("Like", "Dislike"))
        right = gr.Chatbot(label="Tuned model", height=CHAT_HEIGHT, elem_id="chat-right",
                           feedback_options=("Like", "Dislike"))
    with gr.Row(equal_height=True):
        # one line that grows to six: Enter sends (Gradio sends a taller box on Shift+Enter only)
        message = gr.Textbox(label="Your question", lines=1, max_lines=6, placeholder="Ask something from your field…",
                             scale=5, elem_id="chat-input",
                             info="Both panes get exactly this question. Enter sends it; Shift+Enter starts a new "
                                  "line.")
        with gr.Column(scale=1, min_width=160):
            send = gr.Button("Send", variant="primary")
            clear = gr.Button("Clear the conversation", size="sm")
    with gr.Accordion("Answer settings", open=False):
        system = gr.Textbox(label="System prompt", lines=2,
                            info="Standing instructions given before the conversation, e.g. 'Answer in one "
                                 "sentence.' Use the one you trained with for a fair test.")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature",
                                    info="0 = always the most likely words (same answer every time); higher = "
                                         "more varied and more surprising.")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p",
                              info="Only consider the most likely words that together make up this share; "
                                   "1 = all of them. Only matters when temperature is above 0.")
        with gr.Row():
            max_new = gr.Slider(1, 2048, value=256, step=1, label="Max new tokens",
                                info="The longest answer allowed, in tokens (a token is about 3/4 of a word).")
            seed = gr.Number(label="Seed", value=None, precision=0,
                             info="With temperature above 0: the same seed gives the same answer again. "
                                  "Empty: different each time.")
    with gr.Accordion("Copy the request (curl / Python)", open=False):
        gr.Markdown("The exact request of the right pane's last answer, to run outside the studio.")
        as_curl = gr.Code(label="curl", language="shell", interactive=False)
        as_python = gr.Code(label="Python (huggingface_hub)", language="python", interactive=False)
    with gr.Accordion("Correct an answer", open=False) as correct_box:
        gr.Markdown("Press the thumbs-down under a wrong answer; it appears here. Write the answer the model "
                    "should have given and save it: it is added as a training row to a new version of your dataset.")
        disliked = gr.State({})
        wrong = gr.Textbox(label="The model's answer", interactive=False, lines=3)
        corrected = gr.Textbox(label="The correct answer", lines=4,
                               info="What an expert would answer. It becomes the target for the next training.")
        save_fix = gr.Button("Save as a training row")
        fix_status = gr.Markdown()
    with gr.Accordion("Teach the model your preferences (DPO / KTO)", open=False):
        gr.Markdown("Every thumbs up/down, correction and blind A/B vote is kept. Turn them into a dataset for "
                    "preference training: pairs (a better and a worse answer) for DPO/ORPO, or single answers "
                    "marked good or bad for KTO. Then train with that method in the Train tab, from your run.")
        with gr.Row():
            export_kind = gr.Radio(["preference", "kto"], value="preference", label="Dataset kind", scale=2,
                                   info="preference: better/worse answer pairs (DPO, ORPO); kto: single answers "
                                        "marked good or bad (KTO).")
            export_feedback = gr.Button("Make a dataset from the feedback", scale=1)
        export_status = gr.Markdown(elem_id="chat-feedback-export")

    def pick(ref: str | None):
        try:
            names, left_default, right_default = model_choices(ws, ref)
            prompt, why = trained_system_prompt(ws, ref)
            text = describe(ws, ref)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return (f"{text} {why}".strip(), gr.Dropdown(choices=names, value=left_default),
                gr.Dropdown(choices=names, value=right_default), gr.skip() if prompt is None else prompt, {}, [], [])

    def start_endpoint(ref: str | None):
        if not ref:
            raise gr.Error("Pick a run or an endpoint first.")
        try:
            found = chat.open_target(ws, ref)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return describe(ws, ref), {"url": found.url, "run_id": found.run_id}

    def stop_endpoint(ref: str | None):
        if not ref:
            raise gr.Error("Pick a run or an endpoint first.")
        try:
            if ref.startswith("run-"):
                ep = endpoints.find_endpoint_for_run(ws, ref)
                if ep is not None:
                    endpoints.stop_endpoint(ws, ep.id, reason="stopped from the Chat tab")
            else:
                endpoints.stop_endpoint(ws, ref, reason="stopped from the Chat tab")
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return describe(ws, ref), {}

    def add_server(address: str, api_key_env: str = ""):
        try:
            ep = endpoints.register_remote(ws, address, api_key_env=(api_key_env or "").strip() or None)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return gr.Dropdown(choices=sources(ws), value=ep.id), ""

    def send_message(ref, text, left_name, right_name, left_hist, right_hist, sys_prompt, temp, tp, mx, sd):
        text = (text or "").strip()
        if not ref:
            raise gr.Error("Pick a run or an endpoint to chat with first.")
        if not text:
            raise gr.Error("Type a question first.")
        try:
            settings = _settings(sys_prompt, temp, tp, mx, sd)
            found = chat.open_target(ws, ref)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        histories = {"left": _history(left_hist), "right": _history(right_hist)}
        names = {"left": left_name, "right": right_name}
        bodies = {pane: chat.chat_body(names[pane], chat.build_messages(histories[pane], text, settings.system_prompt),
                                       settings) for pane in PANES if names[pane]}
        if not bodies:
            raise gr.Error("Choose a model for at least one pane.")
        for pane in bodies:
            histories[pane] += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        shown = bodies.get("right") or bodies["left"]
        code = (chat.as_curl(found.url, shown), chat.as_python(found.url, shown))
        state = {"url": found.url, "run_id": found.run_id}
        yield histories["left"], histories["right"], "", *code, describe(ws, ref), state
        for pane, piece, error in stream_panes(found.url, bodies, api_key=found.api_key):
            if error is not None:
                histories[pane][-1]["content"] += f"\n\n⚠️ {error}"
                gr.Warning(str(error))
            else:
                histories[pane][-1]["content"] += piece
            yield histories["left"], histories["right"], "", *code, gr.skip(), state

    def on_thumb(pane: str):
        def handler(history, sys_prompt, state, ref, picked, typed, data: gr.LikeData):
            history = _history(history)
            index = data.index if isinstance(data.index, int) else data.index[0]
            answer = history[index]["content"] if 0 <= index < len(history) else ""
            # Gradio sends True/"Like", False/"Dislike", or "" when the pressed thumb is pressed again (undone)
            liked = None if data.liked in ("", None) else data.liked not in (False, "Dislike")
            context = ([{"role": "system", "content": sys_prompt}] if sys_prompt and sys_prompt.strip() else []) + [
                m for m in history[:index] if m["content"]]
            run_id = (state or {}).get("run_id") or (ref if ref and ref.startswith("run-") else None)
            try:  # every thumb is a KTO row for `studio feedback export --kind kto`; an undone one is withdrawn
                feedback.add_thumb(ws, context, answer, liked, run_id=run_id, model=pane)
            except StudioError as exc:
                gr.Warning(str(exc))
            if liked is not False:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            same = (picked or {}).get("pane") == pane and (picked or {}).get("index") == index
            if same and (typed or "").strip() and typed != answer:  # a correction being written is kept
                return gr.skip(), gr.skip(), gr.skip(), gr.Accordion(open=True)
            gr.Info("Write the right answer in 'Correct an answer' below the chat, then save it.")
            return ({"pane": pane, "index": index, "history": history}, answer, answer,
                    gr.Accordion(open=True))
        return handler

    def save_correction(picked: dict, fixed: str, sys_prompt: str, state: dict, ref: str | None):
        if not picked:
            raise gr.Error("Press the thumbs-down under the answer you want to correct first.")
        history, index = picked["history"], picked["index"]
        context = [m for m in history[:index] if m["content"]]
        messages = ([{"role": "system", "content": sys_prompt}] if sys_prompt and sys_prompt.strip() else []) + context
        run_id = (state or {}).get("run_id") or (ref if ref and ref.startswith("run-") else None)
        try:
            version = feedback.add_correction(ws, messages, fixed, rejected=history[index]["content"], run_id=run_id,
                                              model=picked["pane"])
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return (f"Saved. Dataset version **{version.name}** (`{version.id}`, {version.rows_train} training rows) "
                "holds it: pick it in the Train tab to train on it.")

    refresh.click(lambda: gr.Dropdown(choices=sources(ws)), None, source, api_name="chat_sources")
    source.change(pick, [source], [status, left_model, right_model, system, target, left, right],
                  api_name="chat_pick")
    start.click(start_endpoint, [source], [status, target], api_name="chat_start_endpoint")
    stop.click(stop_endpoint, [source], [status, target], api_name="chat_stop_endpoint")
    add.click(add_server, [url, key_env], [source, url], api_name="chat_add_server")
    inputs = [source, message, left_model, right_model, left, right, system, temperature, top_p, max_new, seed]
    outputs = [left, right, message, as_curl, as_python, status, target]
    # a refusal ("pick a run first") marks the status line, not the panes and the typed question
    send.click(send_message, inputs, outputs, api_name="chat_send", show_progress_on=status)
    message.submit(send_message, inputs, outputs, show_progress_on=status)
    clear.click(lambda: ([], []), None, [left, right], api_name="chat_clear")
    for pane, box in (("left", left), ("right", right)):
        box.like(on_thumb(pane), [box, system, target, source, disliked, corrected],
                 [disliked, wrong, corrected, correct_box])
    export_feedback.click(lambda kind: export_markdown(ws, kind), [export_kind], export_status,
                          api_name="chat_feedback_export")
    save_fix.click(save_correction, [disliked, corrected, system, target, source], fix_status,
                   api_name="chat_correct")

    def _refresh_choices():
        return gr.Dropdown(choices=sources(ws))

    source.attach_load_event(_refresh_choices, None)
    # runs that finished (and endpoints published) since the page loaded appear as soon as the list is opened
    source.focus(_refresh_choices, None, source, show_progress="hidden", api_visibility="private")


def export_markdown(ws: Workspace, kind: str) -> str:
    """The feedback export (studio.evaluation.preference_export) as the Chat and Evaluate tabs show it."""
    from studio.evaluation.preference_export import export

    try:
        version, info = export(ws, kind)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    method = "DPO or ORPO" if kind == "preference" else "KTO"
    return (f"Saved **{version.name}** (`{version.id}`): {info['text']}. Train on it with {method} in the Train "
            "tab (start from your run to keep what it learnt).")
