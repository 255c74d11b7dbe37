"""The Runs tab: every run with its status and progress; a run's page with live curves, log, config and
manifest; cancel, resume, re-run and delete. Polls with gr.Timer: everything shown comes from SQLite and
the run folders, so a reload, a second browser or a restarted studio shows the same runs, still going.
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.core import timetext
from studio.core.errors import StudioError
from studio.core.workspace import Workspace
from studio.training import runs, scheduler, submit, summary
from studio.training.folder import TERMINAL_STATES
from studio.training.lineage import lineage_text
from studio.training.runs import ACTIVE
from studio.ui import compare_view

POLL_S = 2.0
STATUS_COLOURS = {"queued": "#8a8f98", "running": "#4f46e5", "succeeded": "#15803d", "failed": "#b91c1c",
                  "cancelled": "#a16207"}
TABLE_COLUMNS = ["run", "name", "status", "progress", "loss", "eval loss", "model", "data", "preset", "created"]
# shares of the width, so that every column shows on a 1366-pixel screen (long names wrap)
TABLE_WIDTHS = ["17%", "15%", "8%", "10%", "7%", "6%", "10%", "10%", "7%", "10%"]


def _fail(exc: StudioError):
    raise gr.Error(str(exc))


# --- formatting ------------------------------------------------------------------------------------


def runs_table(ws: Workspace) -> pd.DataFrame:
    scheduler.reconcile(ws)
    rows = []
    for run in runs.list_runs(ws):
        rows.append([
            run.id, run.name, run.status, f"{run.progress:.0%} ({run.step or 0}/{run.max_steps or '?'})",
            f"{run.loss:.4f}" if run.loss is not None else "", f"{run.eval_loss:.4f}" if run.eval_loss else "",
            run.base_model, run.dataset_id, run.preset, timetext.short(run.created_at),
        ])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def run_choices(ws: Workspace) -> list[tuple[str, str]]:
    return [(f"{r.id} · {r.name} · {r.status}", r.id) for r in runs.list_runs(ws)]


def default_run(ws: Workspace) -> str | None:
    """What a fresh page shows: the run that trains now, else the newest."""
    found = runs.list_runs(ws)
    running = [r for r in found if r.status == "running"]
    return (running or found)[0].id if found else None


def progress_html(run: runs.Run, last: dict) -> str:
    share = run.progress
    colour = STATUS_COLOURS.get(run.status, "#4f46e5")
    words = f"{run.status}"
    if run.status == "running" and run.cancel_requested_at:
        words = "cancelling (stops after the current step)"
    detail = html.escape(summary.step_line(last)) if last else "waiting for the first step"
    return (
        f'<div class="run-progress"><div style="display:flex;justify-content:space-between;font-size:0.9em">'
        f'<b style="color:{colour}">{html.escape(words)}</b><span>{share:.0%}</span></div>'
        f'<div style="background:var(--border-color-primary);border-radius:6px;height:14px;overflow:hidden">'
        f'<div style="width:{share * 100:.1f}%;background:{colour};height:14px"></div></div>'
        f'<div style="font-size:0.85em;color:var(--body-text-color-subdued);margin-top:4px">{detail}</div></div>'
    )


def loss_frame(curves: dict) -> pd.DataFrame:
    rows = [{"step": e["step"], "loss": e["loss"], "curve": "training loss"}
            for e in curves["steps"] if e.get("loss") is not None]
    rows += [{"step": e["step"], "loss": e["eval_loss"], "curve": "held-out loss"} for e in curves["evals"]]
    for key, name in (("reward_margin", "reward margin (DPO/ORPO/KTO, higher is better)"),
                      ("reward_accuracy", "prefers the chosen answer (share)")):
        rows += [{"step": e["step"], "loss": e[key], "curve": name} for e in curves["steps"] if e.get(key) is not None]
    return pd.DataFrame(rows, columns=["step", "loss", "curve"]).astype({"step": "int64", "loss": "float64"})


def lr_frame(curves: dict) -> pd.DataFrame:
    rows = [{"step": e["step"], "learning rate": e["learning_rate"]}
            for e in curves["steps"] if e.get("learning_rate") is not None]
    return pd.DataFrame(rows, columns=["step", "learning rate"]).astype({"step": "int64", "learning rate": "float64"})


def status_markdown(ws: Workspace, run: runs.Run, curves: dict) -> str:
    when = timetext.lifecycle(run.created_at, run.started_at, run.finished_at, run.status)
    lines = [f"### {run.name}", f"`{run.id}` · **{run.status}** · {run.base_model} on `{run.dataset_id}` · "
             f"preset {run.preset or '-'} · {when}"]
    if run.status == "queued":
        ids = [r.id for r in runs.queue(ws)]
        ahead = (ids.index(run.id) if run.id in ids else 0) + len(runs.list_runs(ws, "running"))
        lines.append(f"Waiting for the device: {ahead} run(s) before it.")
    objective = run.config.get("objective", "sft")
    manifest = run.folder.read_manifest()
    lines.append(f"Method **{objective.upper()}** · {lineage_text(manifest, ws)}")
    marked = [e for e in curves["steps"] if e.get("reward_margin") is not None]
    if marked:
        first, last = marked[0], marked[-1]
        lines.append(f"Reward margin {first['reward_margin']:+.3f} → **{last['reward_margin']:+.3f}** (chosen "
                     f"{last['reward_chosen']:+.3f}, rejected {last['reward_rejected']:+.3f})"
                     + (f" · prefers the chosen answer {first['reward_accuracy']:.0%} → "
                        f"**{last['reward_accuracy']:.0%}**" if last.get("reward_accuracy") is not None else ""))
    verdict = summary.learning_verdict(curves)  # what the two loss curves below say, in words
    if verdict:
        lines.append(verdict)
    for note in ([run.notice] if run.notice else []) + curves["notices"]:
        lines.append(f"> ℹ️ {note}")
    if run.error:
        lines.append(f"**What happened:** {run.error}")
    if run.fix:
        lines.append(f"**What helps:** {run.fix}")
    if run.status == "succeeded" and run.folder.has_adapter():
        lines.append(f"Adapter ready: `{run.folder.adapter}` — chat with it in the Chat tab.")
    elif run.status == "cancelled" and run.folder.has_adapter():
        lines.append("The adapter learnt so far is saved; **Resume** continues from the last checkpoint.")
    lines += tracking_lines(manifest)
    return "\n\n".join(lines)


def tracking_lines(manifest: dict) -> list[str]:
    """Where the run is in MLflow (training/reporting.py), with a link for an http tracking server."""
    from studio.training.tracking import run_link

    entry = (manifest.get("tracking") or {}).get("mlflow")
    if not entry:
        return []
    if not entry.get("run_id"):
        return [f"MLflow: `{entry['uri']}` — no MLflow run yet (it starts with the run; a failure is a notice above)."]
    link = run_link(entry)
    if link:
        return [f"MLflow: run [`{entry['run_id']}`]({link})"]
    return [f"MLflow: run `{entry['run_id']}` at `{entry['uri']}`"]


def run_view(ws: Workspace, run_id: str | None):
    """Everything the run page shows, in the order of its outputs."""
    if not run_id:
        empty = pd.DataFrame(columns=["step", "loss", "curve"])
        return ("No run selected: pick one in the list, or start one with *Start training*.", "", empty,
                pd.DataFrame(columns=["step", "learning rate"]), "", {}, {})
    scheduler.reconcile(ws)
    try:
        run = runs.get_run(ws, run_id)
    except StudioError as exc:
        _fail(exc)
    curves = summary.summarize(run.folder)
    log = "\n".join(ln for ln in run.folder.tail_log(40) if "it/s]" not in ln and "examples/s]" not in ln)
    return (status_markdown(ws, run, curves), progress_html(run, curves["last"]), loss_frame(curves),
            lr_frame(curves), log, run.config, run.folder.read_manifest())


def live_view(ws: Workspace, run_id: str | None):
    """run_view for the page. Gradio's line plot fixes its axes and colours when it is drawn and only swaps
    the points afterwards, so a chart first drawn empty would stay wrong; a title that names the latest point
    makes it redraw as points arrive (and says the newest value)."""
    status, progress, loss, lr, *rest = run_view(ws, run_id)
    return (status, progress, _titled(loss, "loss", "Loss (lower is better)"),
            _titled(lr, "learning rate", "Learning rate"), *rest)


def finished_key(ws: Workspace, run_id: str | None) -> tuple | None:
    """What a finished run's page depends on; None while a run can still change (queued, running)."""
    if not run_id:
        return None
    try:
        run = runs.get_run(ws, run_id)
    except StudioError:
        return None
    if run.status not in TERMINAL_STATES:
        return None
    files = [Path(run.path) / name for name in ("events.jsonl", "train.log", "status.json")]
    return (run_id, run.status, *(f.stat().st_mtime_ns if f.exists() else 0 for f in files))


def poll_view(ws: Workspace, run_id: str | None, shown: tuple | None, outputs: int):
    """The timer's view: a finished run's page is sent once, not redrawn every tick (each redraw resends its
    curves and log to every open browser)."""
    key = finished_key(ws, run_id)
    if key is not None and key == shown:
        return (*[gr.skip()] * outputs, shown)
    return (*live_view(ws, run_id), key)


def action_buttons(ws: Workspace, run_id: str | None) -> tuple[gr.Button, gr.Button]:
    """Cancel and Resume as the chosen run allows: Cancel while it is queued or running, Resume once it failed
    or was cancelled (runs.resume); a button that could only answer with an error is not clickable."""
    status = None
    if run_id:
        try:
            status = runs.get_run(ws, run_id).status
        except StudioError:
            status = None
    return gr.Button(interactive=status in ACTIVE), gr.Button(interactive=status in ("failed", "cancelled"))


def pick_row(ws: Workspace, frame: pd.DataFrame, evt: gr.SelectData) -> gr.Dropdown:
    """A click on a row of the table picks its run. The dropdown only accepts the choices it was last given in
    this browser, and the run may be newer than those: the current list goes with the value."""
    row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
    return gr.Dropdown(choices=run_choices(ws), value=frame.iloc[row]["run"])


def tick(ws: Workspace, run_id: str | None, shown: tuple | None, listed: list | None, outputs: int):
    """The timer's update: the table, the run page (poll_view), the run list when it changed since the last
    tick (the user's choice kept; a run deleted elsewhere is let go) and Cancel/Resume as the run allows."""
    choices = run_choices(ws)
    ids = [value for _, value in choices]
    gone = run_id is not None and run_id not in ids
    run_id = None if gone else run_id
    if gone:
        picker = gr.Dropdown(choices=choices, value=None)
    else:
        picker = gr.Dropdown(choices=choices) if choices != listed else gr.skip()
    return (runs_table(ws), *poll_view(ws, run_id, shown, outputs), picker, *action_buttons(ws, run_id), choices)


def _titled(frame: pd.DataFrame, column: str, title: str):
    points = frame[frame["curve"] == "training loss"] if "curve" in frame else frame
    if len(points):
        last = points.loc[points["step"].idxmax()]
        title += f" · step {int(last['step'])}: {last[column]:.3g}"
    return gr.LinePlot(value=frame, title=title)


# --- actions ---------------------------------------------------------------------------------------


def cancel_run(ws: Workspace, run_id: str) -> str:
    try:
        run = scheduler.cancel(ws, run_id)
    except StudioError as exc:
        _fail(exc)
    return (f"Cancel sent to {run.id}: it stops after the current step and saves a checkpoint and the adapter."
            if run.status == "running" else f"{run.id} is {run.status}.")


def resume_run(ws: Workspace, run_id: str) -> str:
    try:
        run = runs.resume(ws, run_id)
    except StudioError as exc:
        _fail(exc)
    last = run.folder.last_checkpoint()
    return f"{run.id} is queued again; it continues " + (f"from {last.name}." if last else "from the start.")


def rerun_run(ws: Workspace, run_id: str) -> tuple[str, str]:
    try:
        run = submit.rerun(ws, run_id)
    except StudioError as exc:
        _fail(exc)
    return f"New run {run.id} queued with exactly the settings of {run_id}.", run.id


def _with_choices(ws: Workspace, said: str, run_id: str) -> tuple[str, gr.Dropdown]:
    """A handler's message, and its new run picked in a dropdown that lists it (see pick_row)."""
    return said, gr.Dropdown(choices=run_choices(ws), value=run_id)


def delete_run(ws: Workspace, run_id: str, confirmed: bool) -> str:
    if not confirmed:
        raise gr.Error("Tick 'Yes, delete its files' first: deleting a run removes its adapter and checkpoints.")
    try:
        runs.delete(ws, run_id)
    except StudioError as exc:
        _fail(exc)
    return f"Deleted {run_id} and its files."


def run_command(ws: Workspace, run_id: str) -> str:
    try:
        run = runs.get_run(ws, run_id)
    except StudioError as exc:
        _fail(exc)
    manifest = run.folder.read_manifest()
    return submit.command_line(run.base_model, run.dataset_id, run.preset or "balanced", manifest.get("overrides"),
                               run.name, home=ws.home)


# --- layout ----------------------------------------------------------------------------------------


def run_page(prefix: str = "run"):
    """The run page's components (also embedded by the Train tab, with its own prefix for the element ids);
    returns them in run_view's order."""
    status = gr.Markdown(elem_id=f"{prefix}-status")
    progress = gr.HTML(elem_id=f"{prefix}-progress")
    with gr.Row():
        loss = gr.LinePlot(x="step", y="loss", color="curve", color_title="", title="Loss (lower is better)",
                           height=320, label="loss curves", elem_id=f"{prefix}-loss",
                           color_map={"training loss": "#2563eb", "held-out loss": "#f97316"})
        lr = gr.LinePlot(x="step", y="learning rate", title="Learning rate", height=320, label="learning rate")
    # what the two colours mean, in a sentence the legend has no room for
    gr.Markdown("<small>Loss: <b style='color:#2563eb'>blue</b> on the rows it trains on, "
                "<b style='color:#f97316'>orange</b> on held-out rows it never trains on. If orange rises while "
                "blue keeps falling, the model memorises the rows instead of learning from them.</small>")
    with gr.Accordion("Log (last lines of train.log)", open=False):
        log = gr.Code(language=None, label="train.log", lines=12)
    with gr.Accordion("Settings and manifest (what exactly this run used)", open=False):
        with gr.Row():
            config = gr.JSON(label="config.yaml")
            manifest = gr.JSON(label="manifest.json")
    return status, progress, loss, lr, log, config, manifest


def build(ws: Workspace) -> dict:
    gr.Markdown(
        "Every fine-tune of this workspace. Runs go on in the background: close the page, come back later, "
        "or follow one from a terminal with `studio runs show ID --follow`. Runs wait in a queue and start "
        "one at a time per GPU."
    )
    table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, label="Runs (newest first)", wrap=True,
                         elem_id="runs-table", column_widths=TABLE_WIDTHS)
    with gr.Row():
        chosen = gr.Dropdown(label="Run", choices=run_choices(ws), value=default_run(ws), scale=3,
                             info="The run whose progress, curves and log are shown below; or click a row above.")
        refresh = gr.Button("Refresh", size="sm", scale=0)
    page = run_page()
    with gr.Row():
        cancel = gr.Button("Cancel", variant="stop", size="sm")
        resume = gr.Button("Resume", size="sm")
        rerun = gr.Button("Re-run exactly", size="sm")
        command = gr.Button("Show command", size="sm")
        confirm = gr.Checkbox(label="Yes, delete its files", value=False, scale=0,
                              info="Deleting removes the run's adapter, checkpoints and curves.")
        delete = gr.Button("Delete", variant="secondary", size="sm")
    said = gr.Markdown(elem_id="runs-message")
    cli = gr.Textbox(label="The same run from a terminal", lines=1, buttons=["copy"], interactive=False,
                     info="The `studio train` line that starts a run with these settings.", visible=False)
    timer = gr.Timer(POLL_S, active=False)  # ticks while this tab is shown (studio/ui/app.py)

    def refresh_all(run_id):
        choices = run_choices(ws)
        run_id = run_id if run_id in [value for _, value in choices] else None  # a run deleted elsewhere goes
        return runs_table(ws), gr.Dropdown(choices=choices, value=run_id)

    outputs = list(page)
    buttons = [cancel, resume]
    shown = gr.State(None)  # the finished run whose page this browser already shows
    listed = gr.State(None)  # the run choices last sent to this browser's dropdown
    timer.tick(lambda run_id, key, known: tick(ws, run_id, key, known, len(outputs)), [chosen, shown, listed],
               [table, *outputs, shown, chosen, *buttons, listed], api_name="runs_poll", show_progress="hidden")
    refresh.click(refresh_all, [chosen], [table, chosen], api_name="runs_list")

    def picked(frame: pd.DataFrame, evt: gr.SelectData):  # the annotation is how Gradio passes the click
        return pick_row(ws, frame, evt)

    table.select(picked, [table], chosen, api_visibility="private")
    chosen.change(lambda run_id: live_view(ws, run_id), [chosen], outputs, api_name="runs_show").then(
        lambda run_id: action_buttons(ws, run_id), [chosen], buttons, show_progress="hidden",
        api_visibility="private")
    # the endpoints stay as they were for scripts; on the page the buttons follow the run's new status
    cancel.click(lambda run_id: cancel_run(ws, run_id), [chosen], said, api_name="runs_cancel").then(
        lambda run_id: action_buttons(ws, run_id), [chosen], buttons, api_visibility="private")
    resume.click(lambda run_id: resume_run(ws, run_id), [chosen], said, api_name="runs_resume").then(
        lambda run_id: action_buttons(ws, run_id), [chosen], buttons, api_visibility="private")
    rerun.click(lambda run_id: _with_choices(ws, *rerun_run(ws, run_id)), [chosen], [said, chosen],
                api_name="runs_rerun")
    command.click(lambda run_id: run_command(ws, run_id), [chosen], cli, api_name="runs_command").success(
        lambda: gr.Textbox(visible=True), None, cli, api_visibility="private")
    chosen.change(lambda: gr.Textbox(visible=False), None, cli, api_visibility="private")  # not another run's
    delete.click(lambda run_id, ok: delete_run(ws, run_id, ok), [chosen, confirm], said,
                 api_name="runs_delete").then(refresh_all, [gr.State(None)], [table, chosen])
    table.attach_load_event(lambda: runs_table(ws), None)
    # a fresh page (or a reload) shows the run training now; the list is current whenever it is opened
    chosen.attach_load_event(lambda: gr.Dropdown(choices=run_choices(ws), value=default_run(ws)), None)
    cancel.attach_load_event(lambda: action_buttons(ws, default_run(ws))[0], None)
    resume.attach_load_event(lambda: action_buttons(ws, default_run(ws))[1], None)
    chosen.focus(lambda: gr.Dropdown(choices=run_choices(ws)), None, chosen, show_progress="hidden",
                 api_visibility="private")
    compare_view.build(ws, chosen)  # the chosen run's lineage; two or more runs side by side
    # the status strip picks a run here when one of its items is clicked
    return {"timer": timer, "run_picker": chosen}
