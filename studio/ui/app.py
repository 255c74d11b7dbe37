"""Builds the studio's Gradio Blocks: a header and the tabs in the order of the flow.

Each tab lives in studio/ui/<name>_tab.py and exposes `build(ws)`, called inside its gr.Tab; a tab that polls
returns {"timer": its gr.Timer, made inactive}, which ticks only while that tab is shown (the status strip's own
timer always does). A tab whose module does not exist yet says so plainly, with no controls that pretend.
"""

from __future__ import annotations

import importlib
import importlib.util

import gradio as gr

from studio import __version__
from studio.core.paths import ASSETS
from studio.core.workspace import Workspace

# (tab label, module, what it is for, the issue that brings it)
TABS = [
    ("Data", "data_tab", "upload a spreadsheet, map its columns, check it, save a dataset version", 3),
    ("Train", "train_tab", "pick a base model and a preset, check it fits, start a fine-tune", 4),
    ("Runs", "runs_tab", "follow, cancel, resume and compare training runs", 4),
    ("Chat", "chat_tab", "talk to the tuned model beside the base model", 5),
    ("Evaluate", "evaluate_tab", "score base and tuned model on your own golden questions", 5),
    ("Publish", "publish_tab", "take a tuned model to a TGI server or the Hub, verified", 6),
    ("System", "system_tab", "GPUs, memory, disk, versions and the workspace", 2),
]


def build_app(ws: Workspace, warning: str | None = None) -> gr.Blocks:
    from studio.ui import session, statusbar

    handles: dict[str, dict] = {}  # what a tab's build returns: its timer, the Runs tab's run picker
    with gr.Blocks(title="LLMOps Studio", fill_width=True) as app:
        if warning:
            gr.Markdown(f"⚠️ **{warning}**", elem_id="studio-insecure-banner")
        gr.Markdown(
            f"# LLMOps Studio\n"
            f"Teach an open language model your field: **Data → Train → Chat → Evaluate → Publish**. "
            f"<small>v{__version__} · workspace `{ws.home}`</small>",
            elem_id="studio-header",
        )
        signed_in = gr.Markdown("", elem_id="studio-user")

        def who(request: gr.Request) -> str:
            return session.who(ws, request)

        app.load(who, outputs=signed_in, api_visibility="private")
        bar = statusbar.strip()  # device, queue, endpoints: visible from every tab
        with gr.Tabs(elem_id="studio-tabs") as tabs:
            for label, module, purpose, issue in TABS:
                with gr.Tab(label, id=module):
                    name = f"studio.ui.{module}"
                    if importlib.util.find_spec(name) is None:
                        gr.Markdown(
                            f"### {label}: not built yet\n"
                            f"This tab will let you {purpose}. It is not part of this version of the "
                            f"studio yet (tracked as issue {issue})."
                        )
                    else:
                        handles[module] = importlib.import_module(name).build(ws) or {}
        statusbar.connect(app, ws, bar, handles.get("runs_tab", {}).get("run_picker"))
        poll_only_when_shown(tabs, {module: h["timer"] for module, h in handles.items() if "timer" in h})
    return app


def poll_only_when_shown(tabs: gr.Tabs, timers: dict[str, gr.Timer]) -> None:
    """A tab's timer ticks while the tab is shown and stops when another one is picked: an open page that sits
    on the Data tab sends the strip's request every few seconds, not one per polling tab as well."""
    if not timers:
        return
    modules = {label: module for label, module, _, _ in TABS}

    def shown(evt: gr.SelectData):  # Gradio gives the picked tab's label (and index)
        picked = modules.get(evt.value, evt.value)
        return [gr.Timer(active=module == picked) for module in timers]

    tabs.select(shown, None, list(timers.values()), show_progress="hidden", api_visibility="private")


def theme() -> gr.themes.Base:
    """Desktop density (small text and spacing, for a 1366x768 laptop); light or dark follows the system's
    setting (Gradio reads prefers-color-scheme), and studio.css uses the theme's variables so both work."""
    sizes = gr.themes.sizes
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", text_size=sizes.text_sm,
                          spacing_size=sizes.spacing_sm, radius_size=sizes.radius_sm)


def css() -> str:
    path = ASSETS / "studio.css"
    return path.read_text(encoding="utf-8") if path.exists() else ""
