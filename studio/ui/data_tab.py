"""The Data tab: upload (or a sample) → confirm the guessed columns → check and preview → save a version.

Thin: each handler calls one function of studio.data.importer / studio.data.store and formats the result.
"""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio.core import timetext
from studio.core.errors import StudioError
from studio.core.paths import SAMPLES
from studio.core.workspace import Workspace
from studio.data import importer, store
from studio.data.mapping import ROLE_HELP
from studio.data.report import figure, summary_line
from studio.data.templates import TEMPLATE_HELP
from studio.models.catalog import catalog
from studio.ui.guide import guide

SAMPLE_FILES = ["support_faq.csv", "clinical_notes.csv"]
NONE = "(none)"
ROLES = ("instruction", "input", "output", "system", "messages")
ROLE_LABELS = {"instruction": "Question / instruction", "input": "Context (optional)", "output": "Answer",
               "system": "System prompt column (optional)", "messages": "Chat column (instead of the above)",
               "chosen": "Chosen answer (preference data)", "rejected": "Rejected answer (preference data)",
               "label": "Good/bad label (KTO data)"}
AUTO = "auto"
GUIDE = """### Turn a spreadsheet into training data
1. **Upload** a spreadsheet (CSV, Excel, JSON lines, Parquet) with one question and its answer per row,
   or click **Use a sample** to try the flow with a customer-support FAQ.
2. **Check the columns** the studio guessed: which one holds the question, which the answer.
3. Press **Check and preview** to see exactly what the model will read (the answers it learns are
   highlighted) and a report of problems, counted in the model's own tokens.
4. **Save** the dataset version; the Train tab can then use it.

Preference data works the same way: a file with a prompt and a **chosen** and a **rejected** answer per row
(for DPO/ORPO), or a prompt, an answer and a good/bad **label** (for KTO). The preview shows both answers.
"""


def _fail(exc: StudioError):
    raise gr.Error(str(exc))


# --- formatting ----------------------------------------------------------------------------------


LEARNED = "rgba(34,197,94,0.28)"  # translucent green: readable on the light and the dark theme


def preview_html(previews: list[dict[str, Any]]) -> str:
    """Each rendered conversation, token by token: answers (what training learns) on green, markers grey."""
    if not previews:
        return "<p>No rows to preview.</p>"
    out = ['<div style="font-size:0.85em">Each box is one token. '
           f'<span style="background:{LEARNED}">Green</span> '
           'tokens are the answers the model learns to write; the rest is the prompt it reads. '
           '<span style="color:#888">Grey</span> tokens are the chat template\'s markers.</div>']
    for p in previews:
        spans = []
        for piece in p["pieces"]:
            text = html.escape(piece["text"]).replace("\n", "↵<br>")
            style = "border-right:1px solid var(--border-color-primary);"
            if piece["trained"]:
                style += f"background:{LEARNED};"
            if piece["special"]:
                style += "color:#888;font-style:italic;"
            spans.append(f'<span style="{style}">{text}</span>')
        out.append(
            f'<div style="margin:0.6em 0"><b>{p["row_label"].title()} {p["row"]}</b>: {p["tokens"]} tokens, '
            f'{p["trained_tokens"]} learned<pre style="white-space:pre-wrap;font-family:monospace;'
            f'line-height:1.5;padding:0.5em;border:1px solid var(--border-color-primary);border-radius:6px">'
            f'{"".join(spans)}</pre></div>'
        )
    return "\n".join(out)


def checks_frame(report: dict[str, Any]) -> pd.DataFrame:
    rows = [{"Check": c["check"], "Action": c["action"], "Rows": c["count"],
             f"{c['row_label'].title()}s (first 10)": ", ".join(str(r) for r in c["rows"]), "What to do": c["fix"]}
            for c in report["checks"]]
    return pd.DataFrame(rows or [{"Check": "every check passed", "Action": "ok", "Rows": 0}])


def report_markdown(report: dict[str, Any]) -> str:
    t, a = report["tokens"], report["answer_tokens"]
    lines = [f"**{summary_line(report)}**", "",
             f"Tokens per conversation: min {t['min']}, median {t['median']:.0f}, 95% under {t['p95']:.0f}, "
             f"max {t['max']} ({t['total']:,} in all). Answers: median {a['median']:.0f} tokens.",
             f"Validation rows: {report['validation_source']}. Template: `{report['template']}`, tokenizer of "
             f"`{report['base_model']}`."]
    context = report.get("model_context")
    if context and report["max_length"] > context:
        lines.append(f"⚠️ The max length ({report['max_length']}) is longer than the model's context ({context}).")
    if report["rows_train"] == 0:
        lines.append("⚠️ " + importer.no_rows_message(report) + " Download rejected.csv to see why.")
    return "\n\n".join(lines)


def sample_frame(table) -> pd.DataFrame:
    """The first rows as text, long cells shortened (a chat cell shows as its JSON)."""
    def cell(value: Any) -> Any:
        text = value if isinstance(value, (str, int)) else json.dumps(value, ensure_ascii=False, default=str)
        return text[:300] + "…" if isinstance(text, str) and len(text) > 300 else text

    return pd.DataFrame(table.sample()).map(cell)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def source_markdown(inspection: importer.Inspection) -> str:
    """What was read, the guessed columns to check, and (❌) why no mapping can make a dataset of it."""
    table, guess = inspection.table, inspection.guess
    src = table.describe()
    info = (f"Read **{src['name']}**: {_count(src['rows'], 'row')}, {_count(len(src['columns']), 'column')} "
            f"({src['format']}" + (f", {src['encoding']}" if src["encoding"] else "")
            + (f", delimiter `{src['delimiter']!r}`" if src["delimiter"] else "") + ").")
    if src["skipped_empty_rows"]:
        skipped = src["skipped_empty_rows"]
        info += f" {_count(skipped, 'empty row')} {'was' if skipped == 1 else 'were'} skipped."
    if inspection.problem:
        return info + "\n\n" + problem_markdown(inspection.problem)
    info += ("\n\nThe columns below are the studio's **guess**: " + "; ".join(guess.reasons.values())
             if guess.mapping else "\n\nNo column names were recognised: choose the columns below.")
    if guess.notes:
        info += "\n\n⚠️ " + " ".join(guess.notes)
    return info


def problem_markdown(exc: StudioError) -> str:
    return f"❌ **{exc.message}**" + (f" {exc.fix}" if exc.fix else "")


def check_blocker(st: dict) -> str | None:
    """Why 'Check and preview' (or Save) cannot start from what was uploaded; None when it can."""
    if st.get("unreadable"):
        return f"The uploaded file could not be read: {st['unreadable']}"
    if st.get("problem"):
        return st["problem"]
    if st.get("table") is None:
        return "Upload a file or click 'Use a sample' first."
    return None


def versions_frame(ws: Workspace) -> pd.DataFrame:
    rows = [{"ID": v.id, "Name": v.name, "Training rows": v.rows_train, "Validation rows": v.rows_val,
             "Rejected": v.rows_rejected, "Base model": v.base_model, "Template": v.template,
             "Created": timetext.short(v.created_at)} for v in store.list_versions(ws)]
    return pd.DataFrame(rows or [{"ID": "", "Name": "no versions yet"}])


def _rejected_path(prepared: importer.Prepared) -> str | None:
    if not len(prepared.rejected):
        return None
    folder = Path(tempfile.gettempdir()) / "studio-rejected" / prepared.content_hash[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rejected-{prepared.name}.csv"
    path.write_bytes(prepared.rejected_csv())
    return str(path)


# --- the tab -------------------------------------------------------------------------------------


def build(ws: Workspace) -> None:
    guide(GUIDE, open=True, elem_id="data-guide")
    state = gr.State({})
    with gr.Row():
        upload = gr.File(label="1. Your spreadsheet (CSV, TSV, XLSX, JSONL, JSON or Parquet)", scale=3,
                         file_types=[".csv", ".tsv", ".txt", ".xlsx", ".jsonl", ".json", ".parquet"],
                         elem_id="data-upload")
        with gr.Column(scale=2):
            sample = gr.Dropdown(SAMPLE_FILES, value=SAMPLE_FILES[0], label="…or a sample",
                                 info="Small example sheets shipped with the studio: a support FAQ and "
                                      "fictional clinical triage notes.")
            use_sample = gr.Button("Use a sample", variant="secondary")
    source_info = gr.Markdown(elem_id="data-source")
    sample_rows = gr.Dataframe(label="First rows of the file", interactive=False, visible=False, wrap=True)
    gr.Markdown("#### 2. Which column is which?")
    with gr.Row():
        role_boxes = {role: gr.Dropdown([NONE], value=NONE, label=ROLE_LABELS[role], info=ROLE_HELP[role].capitalize(),
                                        interactive=True) for role in ROLES}
    with gr.Row():
        system_prompt = gr.Textbox(label="System prompt (optional)", lines=2, scale=3,
                                   info="A short instruction given before every question, e.g. 'You are the support "
                                        "agent of Acme. Answer in two sentences.' Left empty: none.")
        sheet = gr.Dropdown([], label="Excel sheet", visible=False, info="Which sheet of the workbook holds the rows.")
        header = gr.Checkbox(label="The first row holds the column names", value=True, visible=False,
                             info="Guessed from the file; untick it when the first row is already data.")
    with gr.Accordion("Settings: base model, length, validation", open=False):
        with gr.Row():
            base_model = gr.Dropdown([e.id for e in catalog()], value=importer.DEFAULT_BASE_MODEL, label="Base model",
                                     allow_custom_value=True,
                                     info="Its tokenizer counts the lengths and its chat template renders the rows. "
                                          "Use the model you will train. demo-tiny works offline.")
            template = gr.Dropdown([AUTO, *TEMPLATE_HELP], value=AUTO, label="Chat template",
                                   info="auto: the model's own template, or ChatML/Alpaca when it has none. "
                                        + "; ".join(f"{k}: {v}" for k, v in TEMPLATE_HELP.items()))
        with gr.Row():
            max_length = gr.Number(value=None, label="Max length (tokens)", precision=0,
                                   info="Longest conversation kept. Empty or 0: the model's context, at most 2048.")
            length_policy = gr.Radio(["drop", "truncate"], value="drop", label="Rows over the max length",
                                     info="drop: leave them out (listed in rejected.csv); truncate: cut the answer.")
            val_fraction = gr.Slider(0, 0.5, value=importer.DEFAULT_VAL_FRACTION, step=0.05,
                                     label="Share held out for validation",
                                     info="These rows are not trained on; they measure how well the model "
                                          "generalises. Ignored when a validation file is given.")
            val_rows = gr.Number(value=None, precision=0, label="…or a number of validation rows",
                                 info="When set, exactly this many rows are held out instead of a share. "
                                      "Empty or 0: the share on the left.")
            seed = gr.Number(value=importer.DEFAULT_SEED, precision=0, label="Split seed",
                             info="The same seed gives the same split every time.")
        val_file = gr.File(label="Validation file (optional, same columns)",
                           file_types=[".csv", ".tsv", ".txt", ".xlsx", ".jsonl", ".json", ".parquet"])
    check = gr.Button("3. Check and preview", variant="primary")
    summary = gr.Markdown(elem_id="data-summary")
    with gr.Column(visible=False) as report_box:  # shown by a check: empty, its table and chart looked broken
        with gr.Accordion("What the model will read", open=True):
            preview = gr.HTML()
        with gr.Accordion("Checks", open=True):
            checks = gr.Dataframe(interactive=False, wrap=True)
            with gr.Row():
                plot = gr.Plot(label="Tokens per conversation", scale=3)
                rejected = gr.File(label="rejected.csv: every rejected row with its reason", interactive=False,
                                   scale=1)
    with gr.Row():
        name = gr.Textbox(label="Version name", scale=3, info="Defaults to the file name. You can rename it later.")
        save = gr.Button("4. Save dataset version", variant="primary", scale=1)
    saved = gr.Markdown(elem_id="data-saved")

    gr.Markdown("### Saved dataset versions")
    versions = gr.Dataframe(interactive=False, wrap=True, elem_id="data-versions")
    with gr.Row():
        version_id = gr.Dropdown([], label="Version", info="Pick a saved version to preview, rename or delete.",
                                 scale=2)
        new_name = gr.Textbox(label="New name", scale=2, info="Only the name changes; the data never does.")
    with gr.Row():
        show = gr.Button("Preview", size="sm")
        rename = gr.Button("Rename", size="sm")
        delete = gr.Button("Delete", size="sm", variant="stop")
        reload_versions = gr.Button("Refresh the list", size="sm")
    version_detail = gr.Markdown()
    version_preview = gr.HTML()

    roles = [role_boxes[r] for r in ROLES]
    settings = [system_prompt, base_model, template, max_length, length_policy, val_fraction, val_rows, seed, val_file,
                name]

    def inspect(path: str | None, sheet_name: str | None = None, has_header: bool | None = None):
        empty_roles = [gr.update(choices=[NONE], value=NONE)] * len(ROLES)
        if not path:
            return {}, "", gr.update(visible=False), *empty_roles, gr.update(visible=False), gr.update(visible=False)
        try:
            inspection = importer.inspect_file(path, sheet=sheet_name or None, header=has_header)
        except StudioError as exc:
            # shown in the page, not a fading toast; the dropdowns stay usable. After a sheet or header change
            # those two stay as they were, so that the change can be undone.
            again = sheet_name is not None or has_header is not None
            keep_or_hide = gr.update() if again else gr.update(visible=False)
            return ({"path": path, "sheet": sheet_name, "header": has_header, "unreadable": str(exc)},
                    problem_markdown(exc), gr.update(visible=False), *empty_roles, keep_or_hide, keep_or_hide)
        table, guess = inspection.table, inspection.guess
        src = table.describe()
        choices = [NONE, *table.columns]
        updates = [gr.update(choices=choices, value=guess.mapping.get(role, NONE)) for role in ROLES]
        sheet_update = gr.update(choices=src["sheets"], value=src["sheet"], visible=bool(src["sheets"]))
        header_update = gr.update(value=src["header"], visible=src["format"] in ("csv", "tsv", "xlsx"))
        problem = str(inspection.problem) if inspection.problem else None
        return ({"path": path, "table": table, "sheet": src["sheet"], "header": src["header"], "problem": problem},
                source_markdown(inspection), gr.update(value=sample_frame(table), visible=True), *updates,
                sheet_update, header_update)

    def pick_sample(sample_name: str):
        return inspect(str(SAMPLES / (sample_name or SAMPLE_FILES[0])))

    def current(st: dict, role_values: list[str], values: list[Any]) -> tuple[dict, tuple]:
        if blocker := check_blocker(st):
            raise gr.Error(blocker)
        mapping = {r: v for r, v in zip(ROLES, role_values, strict=True) if v and v != NONE}
        sys_prompt, model, tmpl, length, policy, fraction, rows, seed_value, val_path, version_name = values
        key = (st["path"], st.get("sheet"), st.get("header"), tuple(sorted(mapping.items())), sys_prompt, model, tmpl,
               length, policy, fraction, rows, seed_value, val_path)
        kwargs = dict(system_prompt=sys_prompt, base_model=(model or "").strip() or importer.DEFAULT_BASE_MODEL,
                      template=None if tmpl in (None, AUTO) else tmpl, max_length=int(length) if length else None,
                      length_policy=policy, val_fraction=float(fraction or 0),
                      # a cleared number box comes back as 0: 0 rows means "use the share", as empty does
                      val_size=int(rows) if rows else None, seed=int(seed_value or 0),
                      name=version_name or None)
        return mapping, (key, kwargs, val_path)

    def run_checks(st: dict, *values):
        if blocker := check_blocker(st):  # in the page, next to where the report would be
            return st, "❌ " + blocker, "", None, None, None, gr.update()
        mapping, (key, kwargs, val_path) = current(st, list(values[:len(ROLES)]), list(values[len(ROLES):]))
        try:
            val_table = importer.read_table(val_path) if val_path else None
            prepared = importer.prepare(ws, st["table"], mapping, val_table=val_table, **kwargs)
        except StudioError as exc:
            _fail(exc)
        st = {**st, "key": key, "prepared": prepared}
        report = prepared.report
        return (st, report_markdown(report), preview_html(prepared.previews), checks_frame(report),
                _rejected_path(prepared), figure(report), gr.update(value=prepared.name))

    def save_version(st: dict, *values):
        mapping, (key, _, _) = current(st, list(values[:len(ROLES)]), list(values[len(ROLES):]))
        if st.get("key") != key:  # the settings changed since the last check: check again, then save
            st, *_ = run_checks(st, *values)
        try:
            version, created = importer.save(ws, st["prepared"], values[-1] or None)
        except StudioError as exc:
            _fail(exc)
        message = (f"✅ Saved **{version.id}** ('{version.name}'): {version.rows_train} training and "
                   f"{version.rows_val} validation rows. Pick it in the Train tab."
                   if created else f"This content is already saved as **{version.id}** ('{version.name}').")
        gr.Info(message.replace("**", "").removeprefix("✅ "))  # the message itself is below the preview
        return st, message, versions_frame(ws), gr.update(choices=_version_ids(ws), value=version.id)

    def show_version(dataset_id: str | None):
        if not dataset_id:
            raise gr.Error("Pick a version first.")
        try:
            version = store.get_version(ws, dataset_id)
            previews = importer.preview_version(ws, dataset_id, rows=2)
        except StudioError as exc:
            _fail(exc)
        md = (f"**{version.id}** '{version.name}' from {version.source_name}, "
              f"created {timetext.moment(version.created_at)}. ")
        if version.report:
            md += "\n\n" + report_markdown(version.report)
        return md, preview_html(previews)

    def rename_version(dataset_id: str | None, text: str):
        if not dataset_id or not (text or "").strip():
            raise gr.Error("Pick a version and type its new name.")
        try:
            version = store.rename_version(ws, dataset_id, text)
        except StudioError as exc:
            _fail(exc)
        return f"Renamed {version.id} to '{version.name}'.", versions_frame(ws)

    def delete_version(dataset_id: str | None):
        if not dataset_id:
            raise gr.Error("Pick a version first.")
        try:
            store.delete_version(ws, dataset_id)
        except StudioError as exc:
            _fail(exc)
        return f"Deleted {dataset_id}.", versions_frame(ws), gr.update(choices=_version_ids(ws), value=None), ""

    inspected = [state, source_info, sample_rows, *roles, sheet, header]
    upload.upload(inspect, [upload], inspected, api_name="data_inspect")
    sheet.input(lambda st, s: inspect(st.get("path"), s), [state, sheet], inspected)
    header.input(lambda st, h: inspect(st.get("path"), st.get("sheet"), h), [state, header], inspected)
    use_sample.click(pick_sample, [sample], inspected, api_name="data_use_sample")
    checked = check.click(run_checks, [state, *roles, *settings],
                          [state, summary, preview, checks, rejected, plot, name], api_name="data_check")
    checked.success(lambda: gr.Column(visible=True), None, report_box, api_visibility="private")
    save.click(save_version, [state, *roles, *settings], [state, saved, versions, version_id], api_name="data_save",
               show_progress_on=saved)  # a refusal marks the message, not the saved versions' table
    show.click(show_version, [version_id], [version_detail, version_preview], api_name="data_show")
    rename.click(rename_version, [version_id, new_name], [version_detail, versions], api_name="data_rename")
    delete.click(delete_version, [version_id], [version_detail, versions, version_id, version_preview],
                 api_name="data_delete")
    # versions saved since the page loaded (by someone else, or from the CLI)
    reload_versions.click(lambda: (versions_frame(ws), gr.update(choices=_version_ids(ws))), None,
                          [versions, version_id], api_name="data_versions")
    versions.attach_load_event(lambda: versions_frame(ws), None)
    version_id.attach_load_event(lambda: gr.update(choices=_version_ids(ws)), None)


def _version_ids(ws: Workspace) -> list[tuple[str, str]]:
    return [(f"{v.id} · {v.name}", v.id) for v in store.list_versions(ws)]
