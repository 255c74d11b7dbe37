"""The Runs tab's comparison and lineage: pick two or more runs → their loss curves on one chart, the settings
that differ, their scores on a shared golden set (a chart and a table), their data and what became of them;
and the lineage of the run chosen above. One core call each (studio.publishing.compare,
studio.publishing.lineage); this module only formats."""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from studio.core.errors import StudioError
from studio.core.workspace import Workspace
from studio.publishing.compare import SCORES, compare
from studio.publishing.lineage import lineage, lineage_markdown
from studio.training import runs

# one colour per run (training loss, and a lighter one for its held-out loss): up to compare.MAX_RUNS runs
DARK = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"]
LIGHT = ["#93c5fd", "#fdba74", "#86efac", "#d8b4fe", "#fca5a5", "#67e8f9", "#fde047", "#f9a8d4"]
BASE_COLOUR = "#9ca3af"
SCORE_NAMES = {"exact_match": "exact match", "token_f1": "token F1", "rouge_l": "ROUGE-L"}


def run_choices(ws: Workspace) -> list[tuple[str, str]]:
    return [(f"{r.id} · {r.name} · {r.status}", r.id) for r in runs.list_runs(ws)]


def _label(index: int, run: dict) -> str:
    """A run's short name on the charts: its number in the comparison and the end of its id."""
    return f"{index + 1}: {run['id'][-4:]}"


# --- formatting ------------------------------------------------------------------------------------


def comparison_view(ws: Workspace, run_ids: list[str] | None):
    """Everything the comparison shows, in the order of its outputs."""
    try:
        found = compare(ws, run_ids or [])
    except StudioError as exc:
        raise gr.Error(str(exc)) from None
    labels = {r["id"]: _label(i, r) for i, r in enumerate(found["runs"])}
    return (summary_markdown(found, labels), loss_plot(found, labels), settings_frame(found),
            scores_plot(found, labels), scores_frame(found), data_markdown(found), outcomes_markdown(found))


def summary_markdown(found: dict, labels: dict[str, str]) -> str:
    lines = []
    for i, r in enumerate(found["runs"]):
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        held = f"{r['eval_loss']:.4f}" if r["eval_loss"] is not None else "-"
        lines.append(f"- <b style='color:{DARK[i]}'>{html.escape(labels[r['id']])}</b> `{r['id']}` "
                     f"'{html.escape(r['name'])}' · {r['status']} · step {r['step'] or 0}/{r['max_steps'] or '?'}"
                     f" · loss **{loss}** (<span style='color:{LIGHT[i]}'>held-out</span> **{held}**)"
                     + (f" · continues `{r['continues']}`" if r.get("continues") else ""))
    return "\n".join(lines)


def loss_plot(found: dict, labels: dict[str, str]):
    rows = [{"step": p["step"], "loss": p["loss"],
             "series": f"{labels[p['run']]} {'training' if p['curve'] == 'training loss' else 'held-out'}"}
            for p in found["curves"]]
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"]).astype({"step": "int64", "loss": "float64"})
    colours = {}
    for i, r in enumerate(found["runs"]):
        colours[f"{labels[r['id']]} training"] = DARK[i]
        colours[f"{labels[r['id']]} held-out"] = LIGHT[i]
    # a title that names the runs makes Gradio redraw the chart (axes, colours) for each new comparison
    title = "Loss of " + ", ".join(labels.values()) + " (lower is better; light: held-out rows)"
    return gr.LinePlot(value=frame, title=title, color_map=colours)


def settings_frame(found: dict) -> pd.DataFrame:
    ids = [r["id"] for r in found["runs"]]
    rows = [[item["setting"], *(_cell(item["values"][r]) for r in ids)] for item in found["settings"]["differ"]]
    if not rows:
        rows = [[f"all {found['settings']['same']} settings are the same", *[""] * len(ids)]]
    return pd.DataFrame(rows, columns=["setting", *ids])


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def scores_plot(found: dict, labels: dict[str, str]):
    """The newest shared golden set: one bar per score per run, and the base model's for reference."""
    shared = found["scores"]["shared"]
    frame = pd.DataFrame(columns=["bar", "score", "model"]).astype({"score": "float64"})
    if not shared:
        return gr.BarPlot(value=frame, title="No golden set shared by these runs")
    golden = shared[0]
    rows, order = [], []
    for metric in SCORES:
        for r in found["runs"]:
            value = golden["runs"][r["id"]].get(metric)
            if value is not None:
                rows.append({"bar": f"{SCORE_NAMES[metric]} {labels[r['id']]}", "score": value,
                             "model": labels[r["id"]]})
        if golden["base"].get(metric) is not None:
            rows.append({"bar": f"{SCORE_NAMES[metric]} base", "score": golden["base"][metric], "model": "base"})
        order += [row["bar"] for row in rows[len(order):]]
    colours = {labels[r["id"]]: DARK[i] for i, r in enumerate(found["runs"])} | {"base": BASE_COLOUR}
    return gr.BarPlot(value=pd.DataFrame(rows), title=f"Scores on '{golden['name']}' ({golden['questions']} "
                      "questions; higher is better)", sort=order, color_map=colours)


def scores_frame(found: dict) -> pd.DataFrame:
    ids = [r["id"] for r in found["runs"]]
    rows = []
    for golden in found["scores"]["shared"]:
        for metric, base in golden["base"].items():
            values = [golden["runs"][r].get(metric) for r in ids]
            if any(v is not None for v in values):
                rows.append([f"{golden['name']} ({golden['questions']} q.)", metric, *map(_cell, values),
                             _cell(base)])
    if not rows:
        per_run = "; ".join(f"{r}: {', '.join(sets) or 'none'}" for r, sets in found["scores"]["per_run"].items())
        rows = [["no golden set shared by all", f"evaluated on — {per_run}", *[""] * len(ids), ""]]
    return pd.DataFrame(rows, columns=["golden set", "score", *ids, "base model"])


def data_markdown(found: dict) -> str:
    data = found["data"]
    lines = []
    for v in data["versions"]:
        used = ", ".join(f"`{r}`" for r, d in data["by_run"].items() if d == v["id"])
        lines.append(f"- `{v['id']}` " + ("(deleted)" if v.get("deleted") else
                     f"'{html.escape(v['name'])}' · {v['kind']} · {v['rows_train']} training / {v['rows_val']} "
                     f"held-out rows") + f" — used by {used}")
    for c in data["changes"]:
        lines.append(f"- `{c['from']}` → `{c['to']}`: " + (c.get("error") or
                     f"**+{c['added']}** rows added, **−{c['removed']}** removed, **{c['changed']}** changed "
                     f"(same question, another answer), {c['unchanged']} the same"))
    if len(data["versions"]) == 1:
        lines.append("All of these runs trained on the same dataset version.")
    return "\n".join(lines)


def outcomes_markdown(found: dict) -> str:
    lines = []
    for run_id, out in found["outcomes"].items():
        made = [f"export `{e['id']}` ({e['kind']}, {e['status']})" for e in out["exports"]]
        made += [f"deployment `{d['id']}` → {d['slot']} ({d['status']}, verification {d['verdict']})"
                 + (f" at [{d['url']}]({d['url']})" if (d.get("url") or "").startswith("http") else "")
                 for d in out["deployments"]]
        lines.append(f"- `{run_id}`: " + ("; ".join(made) or "not exported or published"))
    return "\n".join(lines)


def lineage_view(ws: Workspace, run_id: str | None) -> str:
    if not run_id:
        return "No run selected."
    try:
        return lineage_markdown(lineage(ws, run_id))
    except StudioError as exc:
        return f"**{html.escape(str(exc))}**"


# --- layout ----------------------------------------------------------------------------------------


def build(ws: Workspace, chosen: gr.Dropdown) -> None:
    """The lineage of `chosen` (the Runs tab's run) and the comparison, below the run page."""
    with gr.Accordion("Lineage: where this run came from and what became of it", open=True):
        # recomputed on each page load and whenever the chosen run changes
        gr.Markdown(lambda run_id: lineage_view(ws, run_id), inputs=[chosen], elem_id="run-lineage")
    with gr.Accordion("Compare runs", open=False, elem_id="compare"):
        with gr.Row():
            picks = gr.Dropdown(label="Runs to compare", choices=run_choices(ws), multiselect=True, scale=4,
                                max_choices=8, elem_id="compare-pick",
                                info="Two or more runs: their curves on one chart, the settings that differ, "
                                     "their scores on a golden set they share, their data and deployments.")
            go = gr.Button("Compare", variant="primary", scale=0, elem_id="compare-go")
        summary = gr.Markdown(elem_id="compare-summary")
        curves = gr.LinePlot(x="step", y="loss", color="series", color_title="", title="Loss", height=300,
                             label="loss curves", elem_id="compare-loss")
        settings = gr.Dataframe(label="Settings that differ (from each run's frozen config)", interactive=False,
                                wrap=True, elem_id="compare-settings")
        with gr.Row():
            scores = gr.BarPlot(x="bar", y="score", color="model", title="Scores", height=300, label="scores",
                                x_label_angle=-40, elem_id="compare-scores")
            table = gr.Dataframe(label="Scores on every golden set all of them were evaluated on (tuned model)",
                                 interactive=False, wrap=True, elem_id="compare-scores-table")
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Data**: the dataset versions and what changed from one to the next")
                data = gr.Markdown(elem_id="compare-data")
            with gr.Column():
                gr.Markdown("**What became of them**: exports and deployments")
                outcomes = gr.Markdown(elem_id="compare-outcomes")
    go.click(lambda ids: comparison_view(ws, ids), [picks], [summary, curves, settings, scores, table, data, outcomes],
             api_name="runs_compare")
    picks.focus(lambda: gr.Dropdown(choices=run_choices(ws)), None, picks, show_progress="hidden",
                api_visibility="private")
