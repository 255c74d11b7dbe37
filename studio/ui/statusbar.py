"""The status strip above the tabs: the device, the training queue and the live endpoints (studio/status.py),
refreshed by a timer; clicking an item opens its tab (a run opens in the Runs tab).

The same tick notices, per browser session, the runs that ended since the last one and says so: a toast with
a link to the run, and the browser's own notification when the page is in the background and the person
allowed it (the 🔔 item asks). Everything in the browser is the small script in JS below.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from studio import status
from studio.core.workspace import Workspace

POLL_S = 3.0
DEVICE_EVERY = 5  # ticks between two nvidia-smi calls (15 s): free memory changes slowly
RUNS, TRAIN, CHAT, SYSTEM = "Runs", "Train", "Chat", "System"  # the tab each item opens (its label in app.TABS)

TEMPLATE = """<div class="studio-strip" role="status" aria-live="polite">
{{#each value.items}}<button type="button" class="studio-strip-item {{this.kind}}" data-tab="{{this.tab}}"
 data-run="{{this.run}}" title="{{this.title}}">{{this.text}}{{#if this.bar}}<span class="studio-strip-bar">
<span style="width: {{this.percent}}%"></span></span>{{/if}}</button>{{/each}}
<button type="button" class="studio-strip-item notify" data-action="notify" hidden
 title="Let the browser tell you when a run ends while this page is in the background">🔔 Notify me</button>
</div>"""

# Runs once when the strip is drawn. Clicking an item clicks its tab's button (and, for a run, asks the server
# to pick it in the Runs tab); a toast's "Open it" link (#studio-run=ID) does the same. After each refresh, the
# runs that just ended become browser notifications when the page is hidden and notifications are allowed.
JS = """
const openTab = (label) => {
  const tab = [...document.querySelectorAll('#studio-tabs [role=tab]')].find(b => b.textContent.trim() === label);
  if (tab) tab.click();
};
const openRun = (run) => { openTab('Runs'); trigger('click', {run: run}); };
window.studioOpenRun = openRun;
element.addEventListener('click', (e) => {
  const item = e.target.closest('.studio-strip-item');
  if (!item) return;
  if (item.dataset.action === 'notify') {
    Notification.requestPermission().then(() => { item.hidden = Notification.permission !== 'default'; });
    return;
  }
  if (item.dataset.run) openRun(item.dataset.run); else openTab(item.dataset.tab);
});
document.addEventListener('click', (e) => {
  const link = e.target.closest('a[href^="#studio-run="]');
  if (!link) return;
  e.preventDefault();
  openRun(decodeURIComponent(link.getAttribute('href').slice('#studio-run='.length)));
});
const shown = new Set();
window.studioNotifications = [];
const notify = () => {
  const bell = element.querySelector('[data-action=notify]');
  if (bell) bell.hidden = !('Notification' in window) || Notification.permission !== 'default';
  for (const n of (props.value && props.value.notices) || []) {
    if (shown.has(n.key)) continue;
    shown.add(n.key);
    if (!('Notification' in window) || Notification.permission !== 'granted' || !document.hidden) continue;
    const note = new Notification(n.title, {body: n.body, tag: n.key});
    note.onclick = () => { window.focus(); openRun(n.run); note.close(); };
    window.studioNotifications.push(n);
  }
};
watch('value', notify);
notify();
"""


# --- formatting ------------------------------------------------------------------------------------


def _gb(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def device_item(device: dict) -> dict[str, Any]:
    gpus = device["gpus"]
    if not gpus:
        return {"kind": "device", "tab": SYSTEM, "text": f"CPU · {_gb(device['memory_free_gb'])} GB RAM free",
                "title": f"No CUDA GPU: training runs on the {device['cpu_cores']} CPU cores "
                         f"({_gb(device['memory_free_gb'])} of {_gb(device['memory_total_gb'])} GB memory free). "
                         "Click for the System tab."}
    each = "; ".join(f"GPU {g['index']} {g['name']}: {_gb(g['memory_free_gb'])} of {_gb(g['memory_total_gb'])} GB "
                     "free" for g in gpus)
    if len(gpus) == 1:
        text = f"{gpus[0]['name']} · {_gb(gpus[0]['memory_free_gb'])} GB free"
    else:
        free = sum(g["memory_free_gb"] or 0 for g in gpus)
        text = f"{len(gpus)} GPUs · {_gb(free)} GB free"
    return {"kind": "device", "tab": SYSTEM, "text": text, "title": each + ". Click for the System tab."}


def queue_items(queue: dict) -> list[dict[str, Any]]:
    items = []
    for run in queue["running"]:
        steps = f"step {run['step']}/{run['max_steps']}" if run["max_steps"] else "starting"
        word = "cancelling" if run["cancelling"] else "training"
        items.append({"kind": "run", "tab": RUNS, "run": run["id"], "percent": round(run["progress"] * 100),
                      "bar": True, "text": f"▶ {run['name'] or run['id']} {run['progress']:.0%}",
                      "title": f"{run['id']} is {word}: {steps}. Click to open it in the Runs tab."})
    if queue["queued"]:
        items.append({"kind": "queued", "tab": RUNS, "text": f"{queue['queued']} queued",
                      "title": "Runs waiting for the device; they start one at a time per GPU. Click for Runs."})
    if not items:
        items.append({"kind": "idle", "tab": TRAIN, "text": "No run training",
                      "title": "Nothing trains or waits. Click to start a run in the Train tab."})
    return items


def endpoints_item(endpoints: list[dict]) -> dict[str, Any]:
    if not endpoints:
        return {"kind": "endpoints none", "tab": CHAT, "text": "No endpoint live",
                "title": "No model is being served. The Chat tab starts one for a finished run."}
    names = ", ".join(f"{e['name']} ({e['status']}, {e['url']})" for e in endpoints)
    count = len(endpoints)
    return {"kind": "endpoints", "tab": CHAT, "text": f"● {count} endpoint{'s' * (count != 1)} live",
            "title": f"{names}. Click for the Chat tab."}


def notice_text(run: dict) -> tuple[str, str, str]:
    """(title, body, level) of a run that ended, for the toast and the browser notification."""
    name = run["name"] or run["id"]
    if run["status"] == "succeeded":
        loss = f", final loss {run['loss']:.4f}" if run.get("loss") is not None else ""
        return f"Run {name} finished", f"{run['id']} succeeded after {run['step']} steps{loss}.", "info"
    if run["status"] == "failed":
        return f"Run {name} failed", f"{run['id']} failed: {(run['error'] or 'see its log').splitlines()[0]}", "warning"
    return f"Run {name} was cancelled", f"{run['id']} was cancelled at step {run['step'] or 0}.", "info"


def strip_value(snap: dict, notices: list[dict] | None = None) -> dict[str, Any]:
    items = [device_item(snap["device"]), *queue_items(snap["queue"]), endpoints_item(snap["endpoints"])]
    for item in items:
        item.setdefault("run", "")
        item.setdefault("percent", 0)
        item.setdefault("bar", False)
    return {"items": items, "notices": notices or []}


def refresh(ws: Workspace, seen: dict | None) -> tuple[dict, dict]:
    """One tick for one browser session: the strip, and a toast for each run that ended since the last tick.
    `seen` is the session's memory: the runs it watched (id → status) and the last device line."""
    seen = dict(seen or {})
    ticks = seen.get("ticks", 0)
    snap = status.snapshot(ws, device=ticks % DEVICE_EVERY == 0 or "device" not in seen)
    if snap["device"] is None:
        snap["device"] = seen["device"]
    watched = seen.get("watched")
    notices = []
    if watched is not None:  # a fresh page says nothing about runs that ended before it was opened
        gone = {run_id: was for run_id, was in watched.items() if run_id not in snap["queue"]["active"]}
        for run in status.finished_since(ws, gone):
            title, body, level = notice_text(run)
            link = f'<a href="#studio-run={html.escape(run["id"])}">Open it in Runs</a>'
            message = f"<b>{html.escape(title)}</b>: {html.escape(body)} {link}"  # toasts of a kind are grouped
            (gr.Warning if level == "warning" else gr.Info)(message, title=title, duration=15)
            notices.append({"key": f"{run['id']}:{run['status']}", "run": run["id"], "title": title, "body": body})
    seen.update(ticks=ticks + 1, device=snap["device"], watched=snap["queue"]["active"])
    return strip_value(snap, notices), seen


# --- layout ----------------------------------------------------------------------------------------


def strip() -> gr.HTML:
    """The strip itself, placed above the tabs; `connect` wires it once the tabs exist."""
    return gr.HTML({"items": [], "notices": []}, html_template=TEMPLATE, js_on_load=JS, elem_id="studio-strip")


def connect(app: gr.Blocks, ws: Workspace, bar: gr.HTML, run_picker: gr.Dropdown | None) -> None:
    """Refresh the strip on load and every POLL_S; a click on a run picks it in the Runs tab (`run_picker`)."""
    from studio.ui.runs_tab import run_choices

    seen = gr.State(None)
    timer = gr.Timer(POLL_S)
    app.load(lambda s: refresh(ws, s), [seen], [bar, seen], show_progress="hidden", api_visibility="private")
    timer.tick(lambda s: refresh(ws, s), [seen], [bar, seen], show_progress="hidden", api_visibility="private")
    if run_picker is not None:
        def pick(evt: gr.EventData):
            run_id = (evt._data or {}).get("run")
            return gr.Dropdown(choices=run_choices(ws), value=run_id) if run_id else gr.skip()

        bar.click(pick, None, run_picker, show_progress="hidden", api_visibility="private")
