"""The Train tab: pick a dataset version, a base model and a preset; see and change the preset's settings;
check that it fits this machine; start. The run then trains in the background, shown live below and in
the Runs tab. Thin: each handler calls studio.training.presets / studio.training.runs once and formats the result.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import gradio as gr

from studio.core.errors import InvalidInput, StudioError
from studio.core.system import gpus
from studio.core.timetext import moment
from studio.core.workspace import Workspace
from studio.data.store import list_versions
from studio.models.catalog import DEMO_MODEL, catalog, catalog_entry
from studio.training import runs, scheduler, submit
from studio.training.config import PRESET_FIELDS, TrainConfig, field_help
from studio.training.fitcheck import FitEstimate, duration
from studio.training.presets import DEFAULT_PRESET, build_config, load_preset, preset_names
from studio.ui.guide import guide
from studio.ui.picks import fill_if_empty, keep_or_newest
from studio.ui.runs_tab import POLL_S, default_run, poll_view, run_page

GUIDE = """### Fine-tune a model on your data
1. **Dataset**: a version saved in the Data tab.
2. **Base model**: one from the list, a hub id (`org/model`) or the path of a model folder on this machine.
   `demo-tiny` works without a GPU or network.
3. **Preset**: start with *quick-test* to see the loop work, then *balanced*. Open *Settings* to change any value.
4. **Check fit** shows the memory and time the run needs on this machine, and what to change if it does not fit.
5. **Start training**: it runs in the background; follow it below or in the Runs tab.
"""


def _fail(exc: StudioError):
    raise gr.Error(str(exc))


def dataset_choices(ws: Workspace) -> list[tuple[str, str]]:
    return [(f"{v.name} · {v.id} · {v.rows_train} training rows", v.id) for v in list_versions(ws)]


def listed_datasets(ws: Workspace, current: str | None = None) -> gr.Dropdown:
    choices = dataset_choices(ws)
    return gr.Dropdown(choices=choices, value=keep_or_newest(choices, current))


def fill_datasets(ws: Workspace, current: str | None):
    """The newest version into an empty list (saved since the page loaded); otherwise nothing is sent."""
    choices = dataset_choices(ws) if not current else []
    newest = fill_if_empty(choices, current)
    return gr.skip() if newest is None else gr.Dropdown(choices=choices, value=newest)


def model_choices() -> list[str]:
    return [e.id for e in catalog()]


def model_info(name: str) -> str:
    entry = catalog_entry((name or "").strip())
    if entry is None:
        return ("Not in the list: a hub id downloads on first use (set HF_TOKEN for gated models); a folder "
                "must hold a saved model (config.json).") if name else ""
    gated = " · **gated**: accept its license on the hub and set HF_TOKEN" if entry.gated else ""
    return (f"{entry.family} · {entry.size} parameters · context {entry.context:,} tokens · "
            f"{entry.license}{gated}. {entry.notes}")


def preset_text(name: str) -> str:
    try:
        preset = load_preset(name)
    except StudioError as exc:
        _fail(exc)
    return f"**{preset.name}** — {preset.about}\n\n*Cost:* {preset.cost}"


# --- settings: one control per TrainConfig field -------------------------------------------------------


def _kind(name: str) -> str:
    annotation = TrainConfig.model_fields[name].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return "choice"
    return {bool: "bool", int: "int", float: "float"}.get(annotation, "list")


def _control(name: str, value: Any):
    label, info = name.replace("_", " "), field_help(name)
    kind = _kind(name)
    if kind == "choice":
        choices = list(typing.get_args(TrainConfig.model_fields[name].annotation))
        return gr.Dropdown(choices=choices, value=value, label=label, info=info)
    if kind == "bool":
        return gr.Checkbox(value=value, label=label, info=info)
    if kind == "int":
        return gr.Number(value=value, precision=0, label=label, info=info)
    if kind == "float":
        return gr.Number(value=value, label=label, info=info)
    return gr.Textbox(value=", ".join(value), label=label, info=info + " Comma-separated.")


def _from_control(name: str, value: Any) -> Any:
    if _kind(name) == "list":
        return [part.strip() for part in str(value or "").split(",") if part.strip()]
    if _kind(name) == "int" and value is not None:
        return int(value)
    return value


def _to_control(name: str, value: Any) -> Any:
    return ", ".join(value) if _kind(name) == "list" else value


def preset_values(name: str) -> list[Any]:
    """The preset's value of every setting, in the order of the controls."""
    try:
        values = load_preset(name).values()
    except StudioError as exc:
        _fail(exc)
    return [_to_control(k, values[k]) for k in PRESET_FIELDS]


def overrides_of(preset: str, values: list[Any]) -> dict[str, Any]:
    """The settings the user changed from the preset's values."""
    base = load_preset(preset).values()
    changed = {}
    for name, value in zip(PRESET_FIELDS, values, strict=True):
        value = _from_control(name, value)
        if value is None or value == "":
            raise InvalidInput(f"'{name}' is empty.", "Type a value, or pick the preset again to reset it.")
        if isinstance(value, float) and isinstance(base[name], float | int) and abs(value - base[name]) < 1e-12:
            continue
        if value != base[name]:
            changed[name] = value
    return changed


def _config(dataset: str | None, model: str, preset: str, values: list[Any],
            processes: Any = 1) -> tuple[TrainConfig, dict]:
    if not dataset:
        raise InvalidInput("No dataset version is chosen.", "Save one in the Data tab, then pick it here.")
    overrides = overrides_of(preset, values)
    if processes and int(processes) > 1:  # several GPUs (the control shows only where there are)
        overrides["processes"] = int(processes)
    return build_config((model or "").strip(), dataset, preset, overrides), overrides


# --- handlers ------------------------------------------------------------------------------------------


def check_fit(ws: Workspace, dataset: str | None, model: str, preset: str, *values: Any,
              processes: Any = 1) -> tuple[str, dict]:
    """The fit check as Markdown, and the change that fits (empty when it fits)."""
    try:
        cfg, _ = _config(dataset, model, preset, list(values), processes)
        plan = submit.plan(ws, cfg)
    except StudioError as exc:
        _fail(exc)
    if plan.estimate is None:
        return plan.summary, {}
    estimate = FitEstimate.model_validate(plan.estimate)
    rows = "\n".join(f"| {label} | {size / 1024**3:.2f} GB |" for label, size in estimate.parts())
    verdict = estimate.verdict or ""
    icon = "✅" if estimate.fits else "⚠️" if estimate.fits is False else "ℹ️"
    time_line = (f"Time: {duration(estimate.seconds)} for {estimate.steps:,} steps on {estimate.device}."
                 if estimate.steps else "Time: unknown until the dataset's size is known.")
    text = (f"{icon} **{verdict}**\n\n| part of the peak memory | estimate |\n|---|---|\n{rows}\n"
            f"| **peak** | **{estimate.peak_bytes / 1024**3:.2f} GB** |\n\n{time_line}")
    if estimate.strategy_reason:
        each = "for all the processes together" if estimate.device == "the CPU" else "per GPU"
        text += f"\n\n{estimate.strategy_reason} The memory above is {each}."
    if estimate.suggestion:
        text += f"\n\n**{estimate.suggestion}**" + (" Press *Apply the change that fits*." if estimate.changes else "")
    if plan.download:
        text += f"\n\nℹ️ {plan.download}"
    if estimate.notice:
        text += f"\n\n> ℹ️ {estimate.notice}"
    return text, estimate.changes


def apply_changes(changes: dict, *values: Any) -> list[Any]:
    if not changes:
        raise gr.Error("There is no suggested change: run the fit check first (it only suggests one when the run "
                       "does not fit).")
    return [_to_control(n, changes[n]) if n in changes else v for n, v in zip(PRESET_FIELDS, values, strict=True)]


def show_command(dataset: str | None, model: str, preset: str, name: str, *values: Any,
                 from_run: str | None = None, processes: Any = 1, home: Path | None = None) -> str:
    try:
        cfg, overrides = _config(dataset, model, preset, list(values), processes)
    except StudioError as exc:
        _fail(exc)
    return submit.command_line(cfg.base_model, cfg.dataset_id, preset, overrides, (name or "").strip() or None,
                               from_run or None, home=home)


def parent_choices(ws: Workspace) -> list[tuple[str, str]]:
    """Runs with an adapter to continue from (SFT first, then DPO from it)."""
    found = [r for r in runs.list_runs(ws) if r.status in ("succeeded", "cancelled") and r.folder.has_adapter()]
    return [("none: a fresh adapter", "")] + [
        (r.label, r.id) for r in found]


def start(ws: Workspace, dataset: str | None, model: str, preset: str, name: str, force: bool,
          *values: Any, from_run: str | None = None, processes: Any = 1) -> tuple[str, str]:
    """Freeze the settings into a new run and queue it; the background scheduler starts it."""
    try:
        cfg, overrides = _config(dataset, model, preset, list(values), processes)
        planned = submit.plan(ws, cfg, from_run=from_run or None)  # its advice is said even without Check fit
        run = submit.submit(ws, cfg, preset=preset, overrides=overrides, name=(name or "").strip() or None,
                            force=bool(force), from_run=from_run or None, estimate=planned.estimate)
    except StudioError as exc:
        _fail(exc)
    scheduler.nudge()  # the background scheduler starts it now, not at its next pass (up to 2 s later)
    ahead = len(runs.queue(ws)) - 1 + len(runs.list_runs(ws, "running"))
    # worded so that it stays true once the run has started (the page below shows where it is now)
    when = "no run ahead of it" if ahead == 0 else f"{ahead} run{'s' if ahead > 1 else ''} ahead of it"
    said = [text for text in (run.notice, (planned.estimate or {}).get("advice")) if text]
    notice = "".join(f"\n\n> ℹ️ {text}" for text in said)
    gr.Info(f"Run {run.id} is queued: its progress shows under the settings and in the Runs tab.")
    return (f"Run **{run.id}** was queued on {moment(run.created_at, relative=False)}, with {when}. Its status "
            f"and progress show below and in the Runs tab.{notice}", run.id)


# --- layout --------------------------------------------------------------------------------------------


def build(ws: Workspace) -> dict:
    guide(GUIDE)
    with gr.Row():
        dataset = gr.Dropdown(label="Dataset version", choices=dataset_choices(ws), scale=3,
                              info="The checked, saved data to learn from (Data tab).")
        refresh = gr.Button("Refresh list", size="sm", scale=0)
        name = gr.Textbox(label="Run name (optional)", scale=2,
                          info="To recognise the run later, e.g. 'support answers v2'.")
    with gr.Row():
        with gr.Column(scale=3):
            model = gr.Dropdown(label="Base model", choices=model_choices(), value=DEMO_MODEL, allow_custom_value=True,
                                info="The open model to teach: pick one, type a hub id like org/model, or the path "
                                     "of a model folder on this machine.")
            about_model = gr.Markdown(model_info(DEMO_MODEL))
        with gr.Column(scale=2):
            preset = gr.Dropdown(label="Preset", choices=preset_names(), value=DEFAULT_PRESET,
                                 info="A tested set of settings; the settings below show its values.")
            about_preset = gr.Markdown(preset_text(DEFAULT_PRESET))
        with gr.Column(scale=2):
            from_run = gr.Dropdown(label="Continue from run (optional)", choices=parent_choices(ws), value="",
                                   info="Start from an earlier run's adapter instead of a fresh one: SFT first, "
                                        "then DPO/KTO on your feedback from it. The method is in the settings "
                                        "(objective) and the dpo, orpo and kto presets.")
        gpu_count = len(gpus())
        processes = gr.Number(value=1, precision=0, minimum=1, maximum=max(gpu_count, 1), label="GPUs (processes)",
                              info=field_help("processes"), visible=gpu_count > 1, elem_id="train-processes")
    with gr.Accordion("Settings (the preset's values; change any of them)", open=False):
        initial = load_preset(DEFAULT_PRESET).values()
        controls = []
        fields = list(PRESET_FIELDS)
        for row_start in range(0, len(fields), 3):
            with gr.Row():
                for field in fields[row_start:row_start + 3]:
                    controls.append(_control(field, initial[field]))
    with gr.Row():
        fit = gr.Button("Check fit")
        apply = gr.Button("Apply the change that fits", size="sm", interactive=False)
        command = gr.Button("Show command", size="sm")
        force = gr.Checkbox(label="Start even if it does not fit", value=False,
                            info="The fit check is an estimate; tick this to try anyway.")
        go = gr.Button("Start training", variant="primary")
    fit_text = gr.Markdown(elem_id="train-fit")
    changes = gr.State({})
    cli = gr.Textbox(label="The same run from a terminal", lines=1, buttons=["copy"], interactive=False,
                     info="Paste it into a terminal on this machine to start the same run with the CLI.",
                     visible=False)  # shown by Show command
    started = gr.Markdown(elem_id="train-started")
    current = gr.State(None)
    gr.Markdown("#### Progress of the run started here (or the one training now)")
    page = run_page("train-run")
    timer = gr.Timer(POLL_S, active=False)  # ticks while this tab is shown (studio/ui/app.py)

    refresh.click(lambda current: listed_datasets(ws, current), dataset, dataset, api_name="train_datasets")
    # a step count decides the run's length over epochs: epochs is greyed while it does not count
    steps, epochs = controls[fields.index("max_steps")], controls[fields.index("epochs")]
    steps.change(lambda n: gr.Number(interactive=not (n or 0) > 0), steps, epochs, show_progress="hidden",
                 api_visibility="private")
    model.change(model_info, model, about_model)
    preset.change(lambda p: (preset_text(p), *preset_values(p)), preset, [about_preset, *controls],
                  api_name="train_preset")
    fit.click(lambda d, m, p, pr, *v: check_fit(ws, d, m, p, *v, processes=pr), [dataset, model, preset, processes,
              *controls], [fit_text, changes], api_name="train_fit_check")
    apply.click(apply_changes, [changes, *controls], controls, api_name="train_apply_change")
    # clickable only when the fit check suggested a change (it does only when the run does not fit)
    changes.change(lambda c: gr.Button(interactive=bool(c)), changes, apply, show_progress="hidden",
                   api_visibility="private")
    commanded = command.click(lambda d, m, p, n, fr, pr, *v: show_command(d, m, p, n, *v, from_run=fr, processes=pr,
                                                                          home=ws.home),
                          [dataset, model, preset, name, from_run, processes, *controls], cli,
                          api_name="train_command")
    commanded.success(lambda: gr.Textbox(visible=True), None, cli, api_visibility="private")
    go.click(lambda d, m, p, n, f, fr, pr, *v: start(ws, d, m, p, n, f, *v, from_run=fr, processes=pr),
             [dataset, model, preset, name, force, from_run, processes, *controls], [started, current],
             api_name="train_start")
    from_run.focus(lambda: gr.Dropdown(choices=parent_choices(ws)), None, from_run, show_progress="hidden",
                   api_visibility="private")
    shown = gr.State(None)  # the finished run whose page this browser already shows
    # the newest version is picked on a fresh page, and when the list is refreshed or opened while nothing
    # (or a deleted version) is picked; a version the expert picked stays
    dataset.attach_load_event(lambda: listed_datasets(ws), None)
    # versions saved in the Data tab since the page loaded appear as soon as the list is opened
    dataset.focus(lambda current: listed_datasets(ws, current), dataset, dataset, show_progress="hidden",
                  api_visibility="private")
    # ... and, while the Train tab is shown, a version saved since the page loaded fills an empty list
    # one request a tick: the run's progress, and the newest version into a still empty dataset list
    timer.tick(lambda run_id, key, picked: (*poll_view(ws, run_id or default_run(ws), key, len(page)),
                                            fill_datasets(ws, picked)),
               [current, shown, dataset], [*page, shown, dataset], show_progress="hidden")
    return {"timer": timer}
