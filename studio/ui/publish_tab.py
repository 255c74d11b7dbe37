"""The Publish tab: pick a finished run and a target, see exactly what will happen, press Publish,
follow the progress, get the URL, a curl example and the verification; list, re-verify and roll back.

Thin: every handler is one call of studio.publishing.pipeline / deployments, then formatting. The
option fields and their help text come from the targets' option models.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from studio.core import timetext
from studio.core.errors import StudioError
from studio.core.workspace import Workspace
from studio.publishing import deployments, pipeline
from studio.publishing.source import publishable_runs
from studio.publishing.targets import target_classes
from studio.publishing.verify import CAUSE_TEXT
from studio.ui.guide import guide
from studio.ui.picks import keep_or_newest

GUIDE = """### Publish a tuned model
1. Choose a **finished run** and **where** it should answer: this machine (the default, no Docker needed),
   TGI in Docker, a server you already run (TGI, vLLM, SGLang), the Hugging Face Hub, or an Inference Endpoint.
2. Read **what will happen**: the export, the exact command or repo, the token limits taken from your data.
3. Press **Publish**. The studio exports the model, starts or pushes it, then asks it the run's own questions
   and checks it answers exactly like the model you chatted with in the studio.
"""
SECRET = {"api_key", "token"}
LABELS = {"gpus": "GPUs", "api_key": "API key", "repo_id": "Repo", "url": "Server URL", "model_name": "Model name "
          "on the server", "endpoint": "Hub address", "serve_check": "Check the pushed files answer alike",
          "name": "Name", "max_input_tokens": "Max input tokens", "max_total_tokens": "Max total tokens",
          "scale_to_zero_minutes": "Scale to zero after (minutes)", "max_replica": "Max replicas"}
NUMERIC_TEXT = {"port", "max_input_tokens", "max_total_tokens", "max_model_len"}  # optional numbers typed in a text box
# per target: the option fields shown, in order (the rest keep their defaults)
SHOWN = {
    "local": ["name", "merged", "port", "quantize"],
    "vllm": ["name", "merged", "port", "max_model_len", "timeout"],
    "tgi-docker": ["name", "merged", "port", "host", "gpus", "quantize", "image", "tag", "max_input_tokens",
                   "max_total_tokens", "timeout"],
    "vllm-docker": ["name", "merged", "port", "host", "gpus", "api_key", "image", "tag", "max_total_tokens", "timeout"],
    "sglang-docker": ["name", "merged", "port", "host", "gpus", "api_key", "image", "tag", "max_total_tokens",
                      "timeout"],
    "remote": ["url", "api_key", "merged", "model_name", "engine", "timeout"],
    "hub": ["repo_id", "private", "merged", "token", "endpoint", "serve_check"],
    "inference-endpoint": ["repo_id", "private", "token", "name", "namespace", "vendor", "region", "accelerator",
                           "instance_type", "instance_size", "scale_to_zero_minutes", "max_replica", "timeout"],
}


def _field_component(name: str, field) -> gr.components.Component:
    """A widget for one option field, labelled and explained from the option model."""
    label = LABELS.get(name) or name.replace("_", " ").capitalize()
    info = field.description or ""
    annotation = str(field.annotation)
    default = None if field.default is ... else field.default
    if name in SECRET:
        return gr.Textbox(label=label, info=info, type="password", value="")
    if annotation in ("<class 'bool'>", "typing.Literal[True]"):
        return gr.Checkbox(label=label, info=info, value=bool(default))
    if "Literal" in annotation:
        choices = [c for c in getattr(field.annotation, "__args__", ()) if isinstance(c, str)]
        if not choices:  # Optional[Literal[...]]
            inner = [a for a in field.annotation.__args__ if a is not type(None)][0]
            choices = list(inner.__args__)
            return gr.Dropdown(label=label, info=info, choices=[""] + choices, value=default or "")
        return gr.Radio(label=label, info=info, choices=choices, value=default)
    if ("int" in annotation or "float" in annotation) and default is not None:
        return gr.Number(label=label, info=info, value=default, precision=0 if "int" in annotation else None)
    # optional numbers too: an empty box reads as "automatic", where a Number would show 0
    return gr.Textbox(label=label, info=info, value="" if default is None else default,
                      placeholder="automatic" if default is None else None)


def collect(target: str, names: list[str], values: list[Any]) -> dict[str, Any]:
    """The chosen target's options from the widgets: empty fields keep the target's defaults."""
    options: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        if isinstance(value, str):
            value = value.strip()
        if value in (None, "") or (isinstance(value, float) and value != value):
            continue
        if isinstance(value, str) and value.isdigit() and name in NUMERIC_TEXT:
            value = int(value)
        elif isinstance(value, float) and value.is_integer() and name not in ("timeout", "poll"):
            value = int(value)
        options[name] = value
    return options


def plan_markdown(plan: dict) -> str:
    lines = [f"**Where:** `{plan['slot']}`" + (f" → {plan['url']}" if plan.get("url") else ""), "",
             "**What will happen:**"]
    lines += [f"{n}. {step}" for n, step in enumerate(plan["steps"], 1)]
    if plan.get("limits"):
        lim = plan["limits"]
        lines += ["", f"**Token limits:** at most {lim['max_input_tokens']} tokens in, "
                  f"{lim['max_total_tokens']} in and out together — from {lim['basis']}."]
    if plan.get("command_text"):
        lines += ["", "**The command:**", "```", plan["command_text"], "```"]
    for name, content in plan.get("files", {}).items():
        lines += ["", f"**{name}** (the same, for `docker compose up -d`):", "```yaml", content.strip(), "```"]
    lines += ["", *[f"> {note}" for note in plan.get("notes", [])]]
    return "\n".join(lines)


def verification_markdown(dep: deployments.Deployment) -> str:
    v = dep.verification or {}
    head = {"passed": "✅", "passed_with_differences": "⚠️", "failed": "❌"}.get(v.get("verdict"), "⏳")
    verdict = (v.get("verdict") or "not run yet").replace("_", " ")
    lines = [f"{head} **{dep.status}** · verification **{verdict}** — {v.get('summary', 'not verified yet')}", ""]
    lines += _drift_lines(v)
    items = v.get("items") or []
    whys = [CAUSE_TEXT.get(i.get("cause") or "", "") if not i["match"] or i.get("cause") else "" for i in items]
    if items:  # the "Why it differs" column only when a reply differs: empty, it is squeezed to nothing
        lines += ["| | Question | Studio model | Published model |" + (" Why it differs |" if any(whys) else "")
                  + " Drift from the Chat model |", "|---|---|---|---|" + ("---|" if any(whys) else "") + "---|"]
        for item, why in zip(items, whys, strict=True):
            cell = (item.get("diff") or item["endpoint"]) if not item["match"] else item["endpoint"]
            drift = item.get("drift") or {}
            moved = ("none" if drift.get("first_difference") is None else f"{drift['agreement']:.0%} the same; "
                     f"differs from token {drift['first_difference']}") if drift else ""
            lines.append(f"| {'=' if item['match'] else '≠'} | {_cell(item['prompt'])} | "
                         f"{_cell(item['studio'])} ({item['studio_finish']}) | {_cell(cell)} "
                         f"({item['endpoint_finish']}) |" + (f" {_cell(why)} |" if any(whys) else "")
                         + f" {moved} |")
    return "\n".join(lines)


def _drift_lines(v: dict) -> list[str]:
    """Where the prompts came from and the pass rule that applied (publishing/drift.py)."""
    lines = []
    origin = v.get("prompts_from") or {}
    if origin.get("kind") == "golden":
        lines.append(f"Asked: {origin.get('asked')} of the {origin.get('of')} questions of the golden set "
                     f"**{origin.get('name')}** (evaluation `{origin.get('evaluation')}`)"
                     + (", with the dataset's system prompt." if origin.get("system_prompt") else "."))
    elif origin.get("kind") == "validation":
        lines.append(f"Asked: {origin.get('asked')} validation rows of `{origin.get('dataset')}` "
                     "(evaluate the run on a golden set to verify with your own questions).")
    if v.get("rule"):
        lines.append(f"Pass rule — {v['rule']}.")
    return [*lines, ""] if lines else []


def _cell(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:300]


def result_markdown(dep: deployments.Deployment) -> str:
    lines = [f"### {dep.target}: {dep.url or 'no URL'}", f"Version `{dep.model_version}` · deployment `{dep.id}`"]
    details = dep.options.get("details") or {}
    if dep.status == "manual":
        lines += ["", "Docker cannot run here: start it on a machine with Docker with the command below (or the "
                  f"compose file `{details.get('compose_file')}`), then press **Re-verify**.", "```",
                  details.get("command_text", ""), "```"]
    from studio.publishing.mlflow_registry import describe

    tracked = describe(dep.options.get("mlflow"))  # the MLflow model version, or why there is none
    if tracked:
        lines += ["", tracked.strip()]
    return "\n".join(lines) + "\n\n" + verification_markdown(dep)


def deployments_frame(ws: Workspace) -> pd.DataFrame:
    rows = [{"ID": d.id, "Where": d.slot, "Status": d.status, "Verification": d.verdict.replace("_", " "),
             "Version": d.model_version, "URL": d.url or "", "Published": timetext.short(d.created_at)}
            for d in deployments.list_deployments(ws)]
    return pd.DataFrame(rows or [{"ID": "", "Where": "nothing published yet"}])


def build(ws: Workspace) -> None:
    guide(GUIDE)
    classes = target_classes()
    with gr.Row():
        run = gr.Dropdown(label="Finished run", choices=publishable_runs(ws), scale=2,
                          info="Only runs that finished training can be published.")
        refresh_runs = gr.Button("↻ Runs", size="sm", scale=0)
        target = gr.Radio(label="Where", choices=[(cls.label, kind) for kind, cls in classes.items()], value="local",
                          scale=3, info="This machine needs nothing else; the others are described as you pick them.")
    target_help = gr.Markdown(classes["local"].help)
    names: list[str] = []
    widgets: list[gr.components.Component] = []
    owners: list[str] = []
    groups = {}
    for kind, cls in classes.items():
        with gr.Group(visible=kind == "local") as group, gr.Row():  # side by side: the Publish button stays up
            for name in SHOWN[kind]:
                widgets.append(_field_component(name, cls.Options.model_fields[name]))
                names.append(name)
                owners.append(kind)
        groups[kind] = group

    def options_of(kind: str, values: list[Any]) -> dict[str, Any]:
        mine = [(n, v) for n, v, o in zip(names, values, owners, strict=True) if o == kind]
        return collect(kind, [n for n, _ in mine], [v for _, v in mine])

    with gr.Row():
        preview_btn = gr.Button("Show what will happen")
        publish_btn = gr.Button("Publish", variant="primary")
    plan_md = gr.Markdown(elem_id="publish-plan")
    result_md = gr.Markdown(elem_id="publish-result")
    curl = gr.Code(label="Try it (curl)", language="shell", interactive=False)

    gr.Markdown("### Deployments")
    table = gr.Dataframe(value=lambda: deployments_frame(ws), interactive=False, wrap=True)
    with gr.Row():
        chosen = gr.Textbox(label="Deployment", scale=2, info="A deployment ID from the table, or a place "
                            "(the 'Where' column): re-verify or roll back what runs there.")
        api_key = gr.Textbox(label="Server API key", type="password", info="Only for a remote server that asks "
                             "for one; never stored.")
        token = gr.Textbox(label="Hub token", type="password", info="Only for the Hub targets when HF_TOKEN is not "
                           "set; never stored.")
    with gr.Row():
        verify_btn = gr.Button("Re-verify")
        rollback_btn = gr.Button("Roll back to the previous version", variant="stop")

    def listed_runs(current: str | None = None):
        choices = publishable_runs(ws)
        return gr.update(choices=choices, value=keep_or_newest(choices, current))

    def on_target(kind):
        return [gr.update(visible=k == kind) for k in groups] + [classes[kind].help]

    target.change(on_target, target, [*groups.values(), target_help], api_visibility="private")
    refresh_runs.click(listed_runs, run, run, api_visibility="private")
    # runs that finished since the studio started: listed on a fresh page and whenever the list is opened; the
    # newest is picked while nothing (or a run no longer listed) is, a run the expert picked stays
    run.attach_load_event(lambda: listed_runs(None), None)
    run.focus(listed_runs, run, run, show_progress="hidden", api_visibility="private")

    def on_preview(run_id, kind, *values):
        if not run_id:
            raise gr.Error("Choose a finished run first.")
        try:
            return plan_markdown(pipeline.preview(ws, run_id, kind, options_of(kind, list(values))).to_dict())
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc

    def on_publish(run_id, kind, *values, progress=gr.Progress()):  # noqa: B008  (how Gradio injects progress)
        if not run_id:
            raise gr.Error("Choose a finished run first.")
        try:
            dep = pipeline.publish(ws, run_id, kind, options_of(kind, list(values)),
                                   progress=lambda f, m: progress(max(0.0, min(1.0, f)), desc=m))
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return result_markdown(dep), deployments.curl_example(dep), deployments_frame(ws), dep.id

    def act(action, ref, key, hub_token, progress):
        if not (ref or "").strip():
            raise gr.Error("Type a deployment ID or place from the table first.")
        try:
            dep = action(ws, ref.strip(), {"api_key": key, "token": hub_token},
                         progress=lambda f, m: progress(max(0.0, min(1.0, f)), desc=m))
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return result_markdown(dep), deployments.curl_example(dep), deployments_frame(ws)

    def on_reverify(ref, key, hub_token, progress=gr.Progress()):  # noqa: B008  (how Gradio injects progress)
        return act(pipeline.reverify, ref, key, hub_token, progress)

    def on_rollback(ref, key, hub_token, progress=gr.Progress()):  # noqa: B008  (how Gradio injects progress)
        return act(pipeline.rollback, ref, key, hub_token, progress)

    def on_run_change(run_id, kind, *values):
        """On a change of run: the plan, or nothing when it cannot be made yet (the button says why)."""
        try:
            return on_preview(run_id, kind, *values) if run_id else ""
        except gr.Error:
            return ""

    def on_pick(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else ""

    inputs = [run, target, *widgets]
    # the buttons' events carry one value per widget; scripts use the named endpoints below instead
    preview_btn.click(on_preview, inputs, plan_md, api_visibility="private")
    run.change(on_run_change, inputs, plan_md, api_visibility="private")
    target.change(on_run_change, inputs, plan_md, api_visibility="private")
    # progress and a refusal show on the result, not on the deployments' table
    publish_btn.click(on_publish, inputs, [result_md, curl, table, chosen], api_visibility="private",
                      show_progress_on=result_md)
    verify_btn.click(on_reverify, [chosen, api_key, token], [result_md, curl, table], api_visibility="private",
                     show_progress_on=result_md)
    rollback_btn.click(on_rollback, [chosen, api_key, token], [result_md, curl, table], api_visibility="private",
                       show_progress_on=result_md)
    table.select(on_pick, None, chosen, api_visibility="private")
    # the newest deployment is the one to re-verify or roll back until another is picked from the table
    chosen.attach_load_event(lambda: next((d.id for d in deployments.list_deployments(ws)), ""), None)
    register_api(ws)


def _api(call):
    try:
        return call()
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc


def register_api(ws: Workspace) -> None:
    """Named endpoints for gradio_client, the same calls as the buttons: options as one dict."""

    def publish_preview(run_id: str, target: str = "local", options: dict | None = None) -> dict:
        """What publishing would do: steps, command, compose file, token limits."""
        return _api(lambda: pipeline.preview(ws, run_id, target, options or {}).to_dict())

    def publish(run_id: str, target: str = "local", options: dict | None = None) -> dict:
        """Export, deploy, verify, record; the deployment with its verification and a curl example."""
        dep = _api(lambda: pipeline.publish(ws, run_id, target, options or {}))
        return dep.to_dict() | {"curl": deployments.curl_example(dep)}

    def deployments_list() -> list:
        """Every deployment, newest first."""
        return [d.to_dict() for d in deployments.list_deployments(ws)]

    def deployment_verify(ref: str, secrets: dict | None = None) -> dict:
        """Ask a deployment (id or place) the verification prompts again."""
        return _api(lambda: pipeline.reverify(ws, ref, secrets or {})).to_dict()

    def deployment_rollback(ref: str, secrets: dict | None = None) -> dict:
        """Put the place's previous version back, verified."""
        return _api(lambda: pipeline.rollback(ws, ref, secrets or {})).to_dict()

    for fn in (publish_preview, publish, deployments_list, deployment_verify, deployment_rollback):
        gr.api(fn, api_name=fn.__name__)
