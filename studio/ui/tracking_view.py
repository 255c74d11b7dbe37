"""The System tab's experiment tracking section: the MLflow tracking URI runs and publishes log to, its check,
and the TensorBoard command for the workspace. The same calls: `studio tracking show|check|set|clear`."""

from __future__ import annotations

import gradio as gr

from studio.core.workspace import Workspace


def tracking_state(ws: Workspace) -> tuple[str, str]:
    """(the URI in the field, where runs log now, in words)."""
    from studio.training.tracking import configured, experiment_name

    uri, source = configured(ws)
    where = (f"New runs and publishes log to MLflow at `{uri}`, experiment `{experiment_name()}` (from {source})."
             if uri else "No MLflow tracking URI is set: nothing goes to MLflow.")
    board = f"TensorBoard for every run of this workspace: `tensorboard --logdir {ws.runs_dir}`"
    return uri or "", f"{where}\n\n{board}"


def check_tracking(ws: Workspace, uri: str) -> str:
    from studio.core.errors import StudioError
    from studio.training.tracking import check, configured, describe

    try:
        return describe(check((uri or "").strip() or configured(ws)[0] or ""))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc


def save_tracking(ws: Workspace, uri: str | None) -> tuple[str, str]:
    from studio.core.errors import StudioError
    from studio.training.tracking import set_uri

    try:
        set_uri(ws, uri)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return tracking_state(ws)


def build_tracking(ws: Workspace) -> None:
    gr.Markdown("### Experiment tracking\nLog every run to your team's MLflow: the frozen settings, loss, eval "
                "loss, learning rate, tokens/s and memory per step, the dataset version, the adapter; every "
                "publish adds a model version to MLflow's registry with its URL and verification result. "
                "A server that does not answer never stops a run or a publish (docs/training.md).")
    where = gr.Markdown(elem_id="system-tracking-where")
    with gr.Row():
        uri = gr.Textbox(label="MLflow tracking URI", placeholder="http://HOST:5000", scale=3,
                         elem_id="system-tracking-uri",
                         info="An MLflow tracking server: every run logs its settings, loss and adapter there.")
        check_btn = gr.Button("Check", size="sm", scale=0)
        save_btn = gr.Button("Log runs here", size="sm", scale=0, variant="primary")
        clear_btn = gr.Button("Stop logging", size="sm", scale=0)
    facts = gr.Markdown(elem_id="system-tracking-facts")
    check_btn.click(lambda u: check_tracking(ws, u), [uri], [facts], api_name="tracking_check")
    save_btn.click(lambda u: save_tracking(ws, u), [uri], [uri, where], api_name="tracking_set")
    clear_btn.click(lambda: save_tracking(ws, None), None, [uri, where], api_name="tracking_clear")
    uri.attach_load_event(lambda: tracking_state(ws)[0], None)
    where.attach_load_event(lambda: tracking_state(ws)[1], None)
