"""The Data tab: its events do the flow a newcomer follows (sample → check → save → versions), over real HTTP."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from conftest import free_port

from studio.data import store


def value(output):
    """A component update arrives as a dict; its value is what the person sees."""
    return output["value"] if isinstance(output, dict) and "__type__" in output else output


@pytest.fixture
def served(ws):
    from gradio_client import Client

    from studio.ui.app import build_app

    app = build_app(ws)
    app.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield app, Client(app.local_url, verbose=False)
    finally:
        app.close()


def test_sample_check_save_show_rename_delete_over_http(ws, served):
    app, client = served
    texts = [getattr(b, "value", "") or "" for b in app.blocks.values()]
    assert any("Use a sample" in str(t) and "1. **Upload**" in str(t) for t in texts)  # the first-run guide
    buttons = [b.value for b in app.blocks.values() if type(b).__name__ == "Button"]
    assert "Use a sample" in buttons and "3. Check and preview" in buttons
    info, sample_rows, *roles, sheet, header = client.predict("support_faq.csv", api_name="/data_use_sample")
    assert value(header) is True
    roles = [value(r) for r in roles]
    instruction, context, output = roles[:3]
    assert "support_faq.csv" in info and "guess" in info
    assert (instruction, context, output) == ("question", "(none)", "answer")
    settings = ["You are the support agent of Acme.", "demo-tiny", "auto", None, "drop", 0.1, None, 42, None, ""]
    summary, preview, checks, rejected, plot, name = client.predict(*roles, *settings, api_name="/data_check")
    assert "45 training and 5 validation rows" in summary and value(name) == "support_faq"
    green = r'background:rgba\(34,197,94,0.28\);">([^<]*)<'  # the green (learned) tokens
    answers = "".join(re.findall(green, preview))
    assert answers.startswith("Open the sign-in page, choose Forgot password")
    assert "How do I reset my password?" in re.sub(r"<[^>]+>", "", preview)
    assert rejected is None and plot is not None
    # the browser sends an emptied number box as 0: no max length and "use the share", not zero validation rows
    cleared = [*settings[:3], 0, settings[4], 0.1, 0, *settings[7:]]
    summary_cleared, *_ = client.predict(*roles, *cleared, api_name="/data_check")
    assert "45 training and 5 validation rows" in summary_cleared
    saved, versions, version_id = client.predict(*roles, *settings, api_name="/data_save")
    assert "Saved" in saved
    (version,) = store.list_versions(ws)
    assert version.system_prompt == "You are the support agent of Acme." and value(version_id) == version.id
    detail, preview_html = client.predict(version.id, api_name="/data_show")
    assert version.id in detail and "support agent of Acme" in re.sub(r"<[^>]+>", "", preview_html)
    message, _ = client.predict(version.id, "FAQ v1", api_name="/data_rename")
    assert store.get_version(ws, version.id).name == "FAQ v1"
    with ws.db() as db:
        db["runs"].insert({"id": "run-1", "dataset_id": version.id, "status": "running",
                           "created_at": "2026-01-01T00:00:00+00:00", "path": str(ws.runs_dir / "run-1")})
    with pytest.raises(Exception, match="used by 1 run"):
        client.predict(version.id, api_name="/data_delete")
    assert store.get_version(ws, version.id)


def test_upload_with_problems_offers_rejected_csv(ws, served, tmp_path):
    from gradio_client import handle_file

    _, served = served
    path = tmp_path / "sheet.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Customer question", "Agent answer"])
        writer.writerows([[f"Question {i} about the order?", f"Answer {i} about the order."] for i in range(8)])
        writer.writerow(["Question 1 about the order?", "Answer 1 about the order."])
        writer.writerow(["Where is it?", ""])
    info, *_ = served.predict(handle_file(str(path)), api_name="/data_inspect")
    assert "10 rows" in info
    roles = ["Customer question", "(none)", "Agent answer", "(none)", "(none)"]
    settings = ["", "demo-tiny", "auto", None, "drop", 0.2, 2, 42, None, "my sheet"]
    summary, _, checks, rejected, _, name = served.predict(*roles, *settings, api_name="/data_check")
    assert "6 training and 2 validation rows" in summary and "2 rejected" in summary
    rows = list(csv.DictReader(io.StringIO(Path(rejected).read_text("utf-8-sig"))))
    assert [(r["row"], r["reason"]) for r in rows] == [("10", "exact duplicate of row 3"),
                                                       ("11", "the answer is empty")]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\x00\x01\x02" * 400)
    info, *_ = served.predict(handle_file(str(bad)), api_name="/data_inspect")
    assert info.startswith("❌") and "binary" in info


def test_an_empty_file_is_explained_in_the_page_and_at_check(ws, served, tmp_path):
    """A 0-byte file: the reason stays in the page, the columns stay choosable, the check repeats the reason."""
    from gradio_client import handle_file

    _, served = served
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    info, sample_rows, *roles, sheet, header = served.predict(handle_file(str(empty)), api_name="/data_inspect")
    assert info.startswith("❌") and "'empty.csv' is empty (0 bytes)" in info and "Export the spreadsheet again" in info
    # updates, not error pills: the only choice left is (none) (an unchanged value is not sent again)
    assert all(r["choices"] == [["(none)", "(none)"]] and r.get("value", "(none)") == "(none)" for r in roles)
    roles = ["(none)"] * len(roles)
    assert sample_rows["visible"] is False and header["visible"] is False
    settings = ["", "demo-tiny", "auto", None, "drop", 0.1, None, 42, None, ""]
    summary, preview, checks, rejected, plot, name = served.predict(*roles, *settings, api_name="/data_check")
    assert summary.startswith("❌ The uploaded file could not be read: 'empty.csv' is empty (0 bytes).")
    assert "Upload a file" not in summary and rejected is None
    with pytest.raises(Exception, match="could not be read: 'empty.csv' is empty"):
        served.predict(*roles, *settings, api_name="/data_save")
    assert store.list_versions(ws) == []
    # a good file afterwards replaces the reason
    info, *_ = served.predict("support_faq.csv", api_name="/data_use_sample")
    assert "❌" not in info and "50 rows, 2 columns" in info


def test_a_one_column_file_says_it_needs_an_answer_column(ws, served, tmp_path):
    from gradio_client import handle_file

    _, served = served
    path = tmp_path / "questions.csv"
    path.write_text("question\nHow do I reset my password?\nWhere is my order?\nCan I pay by card?\n")
    info, _, *roles, _, _ = served.predict(handle_file(str(path)), api_name="/data_inspect")
    assert "3 rows, 1 column (" in info and "1 columns" not in info
    assert ("❌ **'questions.csv' has only one column ('question'); a dataset needs a question column and an "
            "answer column.** Add the answers as a second column") in info
    assert "choose it by hand" not in info
    settings = ["", "demo-tiny", "auto", None, "drop", 0.1, None, 42, None, ""]
    summary, *_ = served.predict(*[value(r) for r in roles], *settings, api_name="/data_check")
    assert summary.startswith("❌ 'questions.csv' has only one column ('question'); a dataset needs a question "
                              "column and an answer column. Add the answers as a second column")
    assert "Pick the question and the answer columns" not in summary
