"""The Evaluate tab: score the tuned model against the base model on the expert's golden questions
(uploaded or typed into the table) or on the run's held-out rows; compare runs on the same golden
set; vote blind between the two answers. One core call per action (studio.evaluation.runner)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from studio.core.errors import StudioError
from studio.core.paths import SAMPLES
from studio.core.workspace import Workspace
from studio.evaluation.ab import ab_pairs, ab_tally, ab_vote
from studio.evaluation.golden import golden_from_rows, read_golden, seen_sentence
from studio.evaluation.runner import Evaluation, compare, evaluate_run, get_evaluation, list_evaluations
from studio.evaluation.scores import closer_sentence
from studio.evaluation.versus import KIND, evaluate_versus, parent_of, win_rate
from studio.ui.chat_tab import export_markdown
from studio.ui.guide import guide
from studio.ui.picks import keep_or_newest

SAMPLE = SAMPLES / "support_faq_golden.csv"
GUIDE = """### Is the tuned model better than before, on your questions?
Pick a **finished run**, then either write your own **golden set** (a question and the answer you expect) in
the table, upload it as a CSV, or use the **held-out rows** the run never trained on. Both models answer every
question; each answer is scored against yours. **Exact match**: identical words. **Token F1**: how many words
overlap (0 to 1). **ROUGE-L**: how much of your answer appears in the same order (0 to 1). **Loss** and
**perplexity** (lower is better) say how natural your held-out answers look to each model.
**Did it help?** For a run continued from another (DPO after SFT), press *Compare with the earlier run*: both runs
answer your golden set, then vote blind between their answers for the win rate.
"""
HELD_OUT = "The run's held-out rows"
GOLDEN = "My golden set (the table below)"


SCORES_LEGEND = ("Exact match: the share of answers word for word yours. Token F1 and ROUGE-L: how much of your "
                 "answer's words the model's answer shares, from 0 (nothing) to 1 (all, ROUGE-L in the same order). "
                 "Held-out loss and perplexity: how unexpected your held-out answers are to the model; lower is "
                 "better.")
TABLE_FIX = ("Type or paste your questions and the answers you expect into the table, upload a CSV, or press "
             "'Use the sample golden set' to try it.")


def finished_runs(ws: Workspace) -> list[tuple[str, str]]:
    from studio.training.runs import list_runs

    return [(r.label, r.id) for r in list_runs(ws)
            if r.status in ("succeeded", "cancelled") and (Path(r.path) / "adapter" / "adapter_config.json").exists()]


def evaluations(ws: Workspace) -> list[tuple[str, str]]:
    return [(f"{e.id}: {e.run_id} on {e.golden_set}", e.id) for e in list_evaluations(ws)]


def versus_markdown(ev: Evaluation) -> str:
    """A run-versus-run evaluation: the two runs' scores side by side and the blind win rate with its count."""
    s, names = ev.summary, ev.summary.get(KIND, {})
    rows = ["| | exact match | token F1 | ROUGE-L |", "|---|---|---|---|"]
    for which, label in (("base", f"Started from: `{names.get('old')}` ({names.get('old_objective', 'sft')})"),
                         ("tuned", f"New run: `{names.get('new')}` ({names.get('new_objective', 'sft')})")):
        m = s.get(which, {})
        rows.append(f"| {label} | {m.get('exact_match', 0):.2f} | {m.get('token_f1', 0):.3f} | "
                    f"{m.get('rouge_l', 0):.3f} |")
    better = s.get("better_f1", {})
    return (f"**{ev.id}** — did it help? *{ev.golden_set}* ({s.get('questions')} questions; golden set "
            f"`{ev.golden_hash}`)\n\n" + "\n".join(rows) +
            f"\n\n{closer_sentence(better, 'the new run', 'the run it started from', bold=True)}\n\n"
            f"Blind A/B: **{win_rate(s)['text']}**. Vote below (Blind A/B) on evaluation `{ev.id}`.")


def summary_markdown(ev: Evaluation) -> str:
    if ev.kind == KIND:
        return versus_markdown(ev)
    s = ev.summary
    rows = ["| | exact match | token F1 | ROUGE-L | held-out loss | perplexity |", "|---|---|---|---|---|---|"]
    for which, label in (("base", "Base model"), ("tuned", "Tuned model")):
        m = s.get(which, {})
        rows.append(f"| {label} | {m.get('exact_match', 0):.2f} | {m.get('token_f1', 0):.3f} | "
                    f"{m.get('rouge_l', 0):.3f} | {m.get('loss', '–')} | {m.get('perplexity', '–')} |")
    better = s.get("better_f1", {})
    text = (f"**{ev.id}** — run `{ev.run_id}` on *{ev.golden_set}* ({s.get('questions')} questions; "
            f"golden set `{ev.golden_hash}`)\n\n" + "\n".join(rows) + f"\n\n<small>{SCORES_LEGEND}</small>"
            f"\n\n{closer_sentence(better, 'the tuned model', 'the base model', bold=True)}")
    if s.get("heldout_rows"):
        text += f" Loss measured on {s['heldout_rows']} held-out rows ({s['heldout_tokens']} answer tokens)."
    if seen_sentence(s):
        text += f"\n\n{seen_sentence(s)}"
    if s.get("ab"):
        ab = s["ab"]
        text += (f"\n\nBlind votes: tuned **{ab['tuned']}**, base **{ab['base']}**, tie {ab['tie']} "
                 f"({ab['voted']} of {ab['total']} pairs).")
    return text


def results_frame(ev: Evaluation) -> pd.DataFrame:
    base, tuned = ("old run", "new run") if ev.kind == KIND else ("base", "tuned")
    return pd.DataFrame([{
        "question": ("(in training) " if i.get("in_training") else "") + i["question"], "your answer": i["reference"],
        f"{base} answer": i["base"]["answer"], f"{base} F1": round(i["base"]["token_f1"], 3),
        f"{tuned} answer": i["tuned"]["answer"], f"{tuned} F1": round(i["tuned"]["token_f1"], 3),
        f"{tuned} ROUGE-L": round(i["tuned"]["rouge_l"], 3), f"{tuned} exact": int(i["tuned"]["exact_match"]),
    } for i in ev.results()])


# the "all runs on this golden set" table at laptop width: short headers, numbers rounded, one line per run
COMPARE_COLUMNS = {  # compare()'s key -> header
    "evaluation": "evaluation", "run": "run", "date": "date", "against": "against", "questions": "n",
    "tuned token_f1": "F1 tuned", "base token_f1": "F1 base", "tuned rouge_l": "ROUGE-L tuned",
    "base rouge_l": "ROUGE-L base", "tuned exact_match": "exact tuned", "tuned loss": "loss tuned",
    "base loss": "loss base", "A/B votes for tuned": "A/B tuned",
}
# at 1366 px the table is ~1300 px wide, 1% ~ 13 px: a column needs its header's longest word (~8 px a letter)
# plus ~16 px of padding, so "tuned" needs 5%, "A/B tuned" (cut to "A/B tun" at 3%) 6%
COMPARE_WIDTHS = ["13%", "16%", "10%", "9%", "4%", "6%", "6%", "7%", "7%", "6%", "5%", "5%", "6%"]
RESULT_WIDTHS = ["17%", "17%", "20%", "6%", "20%", "6%", "8%", "6%"]
NUMBER = "{:.3f}"


def _rounded(value) -> str:
    return "" if value is None else NUMBER.format(value) if isinstance(value, float) else str(value)


def compare_frame(ws: Workspace, ev: Evaluation) -> pd.DataFrame:
    rows = [{header: (row.get(key) or "")[:16].replace("T", " ") if key == "date" else _rounded(row.get(key))
             for key, header in COMPARE_COLUMNS.items()} for row in compare(ws, ev.golden_hash)]
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS.values()))


def _pair_view(pairs: list[dict], index: int, ev: Evaluation | None = None) -> tuple[str, str, str, str]:
    tally = ab_tally(pairs)
    progress = (f"{tally['voted']} of {tally['total']} voted. So far: tuned {tally['tuned']}, base {tally['base']}, "
                f"tie {tally['tie']}.")
    if ev is not None and ev.kind == KIND:
        so_far = win_rate({**ev.summary, "ab": tally})["text"]
        progress = f"{tally['voted']} of {tally['total']} voted. So far: {so_far}."
    if index >= len(pairs):
        return "**All pairs voted.** " + progress, "", "", progress
    pair = pairs[index]
    return f"**Question {index + 1} of {len(pairs)}:** {pair['question']}", pair["a"], pair["b"], progress


def build(ws: Workspace) -> None:
    guide(GUIDE)
    with gr.Row():
        run = gr.Dropdown(label="Run", choices=finished_runs(ws), value=None, scale=3,
                          info="The training run whose tuned model is compared with its base model.")
        source = gr.Radio([GOLDEN, HELD_OUT], value=GOLDEN, label="Questions", scale=3,
                          info="Your own questions with the answers you expect, or rows of your data the run never "
                               "saw.")
        refresh = gr.Button("Refresh", size="sm", scale=0)
    with gr.Row():
        upload = gr.File(label="Upload a golden set", file_types=[".csv", ".jsonl"], type="filepath",
                         elem_id="eval-upload", height=110, scale=3)
        sample = gr.Button("Use the sample golden set", size="sm", scale=1)
    table = gr.Dataframe(headers=["question", "reference answer"], column_count=(2, "fixed"), row_count=4,
                         interactive=True, wrap=True, label="Golden set — type or paste your questions and answers",
                         elem_id="eval-golden", max_height=210)
    with gr.Accordion("Answer length and held-out rows", open=False):
        with gr.Row():
            max_new = gr.Slider(8, 1024, value=128, step=8, label="Max new tokens",
                                info="The longest answer each model may give (about 3/4 of a word per token).")
            heldout_rows = gr.Slider(1, 500, value=50, step=1, label="Held-out rows for the loss",
                                     info="How many held-out rows to measure loss and perplexity on (more = slower).")
    with gr.Row():
        go = gr.Button("Evaluate", variant="primary", scale=2)
        against = gr.Dropdown(label="Did it help? Compare with run", choices=finished_runs(ws), value=None, scale=2,
                              info="Empty: the run it was continued from (--from). Both runs answer the golden "
                                   "set; then vote blind between their answers below.")
        versus = gr.Button("Compare with the earlier run", scale=1)
    summary = gr.Markdown(elem_id="eval-summary")
    # long answers are cut at 120 characters (click a cell for all of it); the tables scroll inside themselves.
    # Hidden until an evaluation fills them: empty, they looked broken.
    with gr.Column(visible=False) as tables:
        results = gr.Dataframe(label="Every question: both answers and their scores (click a cell for its full "
                               "text)", wrap=True, interactive=False, max_chars=120, column_widths=RESULT_WIDTHS,
                               max_height=420, elem_classes="studio-numbers", elem_id="eval-results")
        compared = gr.Dataframe(label="All runs evaluated on this same golden set", wrap=True, interactive=False,
                                column_widths=COMPARE_WIDTHS, max_height=300, elem_classes="studio-numbers",
                                elem_id="eval-compared")
    with gr.Accordion("Earlier evaluations", open=False):
        past = gr.Dropdown(label="Evaluation", choices=evaluations(ws), info="Open an earlier evaluation.")
    with gr.Accordion("Blind A/B: which answer is better?", open=False):
        gr.Markdown("The two answers to each question are shown in a random order, without saying which model "
                    "wrote which. Vote for the better one; the count is revealed as you go and kept with the "
                    "evaluation.")
        ab_state = gr.State({})
        ab_eval = gr.Dropdown(label="Evaluation to vote on", choices=evaluations(ws),
                              info="An evaluation made above or earlier: its two answers to each question are "
                                   "shown side by side, without saying which model wrote which.")
        ab_start = gr.Button("Start (or continue) voting")
        ab_question = gr.Markdown()
        with gr.Row():
            ab_a = gr.Textbox(label="Answer A", interactive=False, lines=4)
            ab_b = gr.Textbox(label="Answer B", interactive=False, lines=4)
        with gr.Row():
            vote_a = gr.Button("A is better")
            vote_tie = gr.Button("About the same")
            vote_b = gr.Button("B is better")
        ab_progress = gr.Markdown()
        with gr.Row():
            ab_export_kind = gr.Radio(["preference", "kto"], value="preference", label="Dataset kind", scale=2,
                                      info="Your votes (winner = chosen, loser = rejected), with the chat's "
                                           "corrections (and thumbs, for KTO), as data for DPO/ORPO or KTO.")
            ab_export = gr.Button("Make a preference dataset from the votes", scale=1)
        ab_export_status = gr.Markdown(elem_id="eval-feedback-export")

    def listed_runs(current: str | None = None) -> gr.Dropdown:
        choices = finished_runs(ws)
        return gr.Dropdown(choices=choices, value=keep_or_newest(choices, current))

    def listed_evaluations() -> gr.Dropdown:
        choices = evaluations(ws)
        return gr.Dropdown(choices=choices, value=keep_or_newest(choices))

    def load_sample():
        return pd.DataFrame([[i.question, i.reference] for i in read_golden(SAMPLE)],
                            columns=["question", "reference answer"])

    def load_upload(path: str | None):
        if not path:
            return gr.skip()
        try:
            items = read_golden(path)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return pd.DataFrame([[i.question, i.reference] for i in items], columns=["question", "reference answer"])

    def show(ev: Evaluation):
        return summary_markdown(ev), results_frame(ev), compare_frame(ws, ev)

    def run_evaluation(run_id, which, rows, tokens, loss_rows, progress=gr.Progress()):  # noqa: B008 (gradio API)
        if not run_id:
            raise gr.Error("Pick a finished run first.")
        try:
            golden = None
            if which == GOLDEN:
                frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
                golden = golden_from_rows(frame.values.tolist(), source="the golden set table", empty_fix=TABLE_FIX)
            ev = evaluate_run(ws, run_id, golden, golden_name="golden set from the Evaluate tab",
                                       max_new_tokens=int(tokens), heldout_rows=int(loss_rows),
                                       progress=lambda f, text: progress(f, desc=text))
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        choices = evaluations(ws)
        return (*show(ev), gr.Dropdown(choices=choices, value=ev.id), gr.Dropdown(choices=choices, value=ev.id))

    def run_versus(run_id, older, rows, tokens, progress=gr.Progress()):  # noqa: B008 (gradio API)
        if not run_id:
            raise gr.Error("Pick the new run first (e.g. the DPO run continued from an SFT run).")
        try:
            frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
            golden = golden_from_rows(frame.values.tolist(), source="the golden set table", empty_fix=TABLE_FIX)
            ev = evaluate_versus(ws, run_id, golden, against=older or parent_of(ws, run_id),
                                 golden_name="golden set from the Evaluate tab", max_new_tokens=int(tokens),
                                 progress=lambda f, text: progress(f, desc=text))
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        choices = evaluations(ws)
        return (*show(ev), gr.Dropdown(choices=choices, value=ev.id), gr.Dropdown(choices=choices, value=ev.id))

    def open_past(eval_id: str | None):
        if not eval_id:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            return show(get_evaluation(ws, eval_id))
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc

    def ab_begin(eval_id: str | None):
        if not eval_id:
            raise gr.Error("Pick an evaluation to vote on.")
        try:
            pairs = ab_pairs(ws, eval_id)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        index = next((n for n, p in enumerate(pairs) if p["vote"] is None), len(pairs))
        return {"eval": eval_id, "index": index}, *_pair_view(pairs, index, get_evaluation(ws, eval_id))

    def ab_cast(choice: str):
        def handler(state: dict):
            if not state or "eval" not in state:
                raise gr.Error("Pick an evaluation above and press 'Start (or continue) voting' first.")
            pairs = ab_pairs(ws, state["eval"])
            if state["index"] >= len(pairs):
                raise gr.Error("Every pair has a vote already.")
            try:
                ab_vote(ws, state["eval"], state["index"], choice)
            except StudioError as exc:
                raise gr.Error(str(exc)) from exc
            pairs = ab_pairs(ws, state["eval"])
            index = next((n for n, p in enumerate(pairs) if p["vote"] is None), len(pairs))
            return {"eval": state["eval"], "index": index}, *_pair_view(pairs, index, get_evaluation(ws, state["eval"]))
        return handler

    refresh.click(lambda current: (listed_runs(current), gr.Dropdown(choices=evaluations(ws)),
                                   gr.Dropdown(choices=evaluations(ws)), gr.Dropdown(choices=finished_runs(ws))),
                  [run], [run, past, ab_eval, against], api_name="eval_refresh")
    sample.click(load_sample, None, table, api_name="eval_sample")
    upload.upload(load_upload, [upload], table, api_name="eval_upload")
    # progress and a refusal show on the summary, not on every table the evaluation fills
    evaluated = [
        go.click(run_evaluation, [run, source, table, max_new, heldout_rows], [summary, results, compared, past,
                 ab_eval], api_name="eval_run", show_progress_on=summary),
        versus.click(run_versus, [run, against, table, max_new], [summary, results, compared, past, ab_eval],
                     api_name="eval_versus", show_progress_on=summary),
        past.change(open_past, [past], [summary, results, compared], api_name="eval_open")]
    for event in evaluated:
        event.success(lambda: gr.Column(visible=True), None, tables, api_visibility="private")
    ab_outputs = [ab_state, ab_question, ab_a, ab_b, ab_progress]
    ab_export.click(lambda kind: export_markdown(ws, kind), [ab_export_kind], ab_export_status,
                    api_name="eval_feedback_export")
    ab_start.click(ab_begin, [ab_eval], ab_outputs, api_name="eval_ab_start", show_progress_on=ab_progress)
    vote_a.click(ab_cast("a"), [ab_state], ab_outputs, api_name="eval_ab_vote_a", show_progress_on=ab_progress)
    vote_b.click(ab_cast("b"), [ab_state], ab_outputs, api_name="eval_ab_vote_b", show_progress_on=ab_progress)
    vote_tie.click(ab_cast("tie"), [ab_state], ab_outputs, api_name="eval_ab_vote_tie", show_progress_on=ab_progress)
    # runs that finished since the studio started: listed on a fresh page and whenever the list is opened
    # the newest run is picked on a fresh page and when the list is refreshed or opened with nothing picked;
    # "Compare with run" stays empty (empty means the run it was continued from)
    run.attach_load_event(lambda: listed_runs(None), None)
    run.focus(listed_runs, run, run, show_progress="hidden", api_visibility="private")
    against.focus(lambda: gr.Dropdown(choices=finished_runs(ws)), None, against, show_progress="hidden",
                  api_visibility="private")
    past.attach_load_event(lambda: gr.Dropdown(choices=evaluations(ws)), None)
    # the newest evaluation is the one to vote on, unless another is picked
    ab_eval.attach_load_event(listed_evaluations, None)
