"""The whole journey of a domain expert, clicked in headless Chromium against a real `python app.py`:
CSV → dataset version → quick-test fine-tune (followed live, through a reload) → chat side by side →
golden-set evaluation → publish to the embedded endpoint, verified → chat with the published model.
Plus the rough edges: a bad file, cancelling from the page, two browsers watching the same run.
Each tab's screenshot for the README is taken at its meaningful moment (docs/screenshots/)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pytest
from browser import ROOT, WINDOW, chromium, open_tab, pick, screenshot, studio_with_demo
from conftest import free_port, save_qa_dataset

from studio.training.presets import load_preset

pytestmark = pytest.mark.browser

SAMPLES = ROOT / "assets" / "samples"
QUESTION = "How do I reset my password?"
STEP = re.compile(r"step (\d+)/(\d+)")


@dataclass
class Studio:
    url: str
    ws: object  # the studio's Workspace, to check what the clicks left behind


@pytest.fixture(scope="module")
def studio(tmp_path_factory, demo_model_source):
    """One studio process for the module, with demo-tiny linked in (never rebuilt)."""
    home = tmp_path_factory.mktemp("journey") / "studio-home"
    with studio_with_demo(home, demo_model_source, free_port()) as (url, ws):
        yield Studio(url, ws)


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, studio):
    context = browser.new_context(viewport=WINDOW)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(studio.url)
    yield page
    context.close()


def step_of(progress) -> int:
    found = STEP.search(progress.inner_text())
    return int(found.group(1)) if found else 0


def wait_for_step(progress, above: int, timeout_s: float = 300) -> int:
    """Poll the page (the studio's timer refreshes it every 2 s) until the run is past `above` steps."""
    deadline = time.monotonic() + timeout_s
    while (step := step_of(progress)) <= above:
        assert "failed" not in progress.inner_text(), progress.inner_text()
        assert time.monotonic() < deadline, f"the run stayed at step {step}: {progress.inner_text()}"
        progress.page.wait_for_timeout(1000)
    return step


def chat_answers(page, timeout_s: float = 120) -> dict[str, str]:
    """Both panes' finished answers: the send event is over once the question box no longer shows it
    generating (Gradio's status classes on the event's outputs)."""
    from playwright.sync_api import expect

    page.locator("#chat-left .message.bot, #chat-right .message.bot").first.wait_for(timeout=timeout_s * 1000)
    busy = page.locator(", ".join(f"#chat-{part} .{state}" for part in ("input", "status")
                                  for state in ("generating", "pending")))
    expect(busy).to_have_count(0, timeout=timeout_s * 1000)
    return {pane: " ".join(page.locator(f"#chat-{pane} .message.bot").all_inner_texts()).strip()
            for pane in ("left", "right")}


def test_a_bad_file_shows_its_message_in_the_page(page, tmp_path):
    panel = open_tab(page, "Data")
    bad = tmp_path / "photo.csv"  # a picture saved under a spreadsheet's name
    bad.write_bytes(bytes(range(256)) * 8)
    panel.locator("#data-upload input[type=file]").set_input_files(bad)
    source = panel.locator("#data-source")
    source.get_by_text("is a binary file, not text or a spreadsheet").wait_for()  # in the page, not a toast
    assert source.inner_text().startswith("❌") and "CSV UTF-8" in source.inner_text()
    assert "Traceback" not in page.content()
    # pressing on says the uploaded file could not be read, with the reason, and nothing was saved
    panel.get_by_role("button", name="3. Check and preview").click()
    summary = panel.locator("#data-summary")
    summary.get_by_text("The uploaded file could not be read").wait_for()
    assert "is a binary file" in summary.inner_text()


@pytest.mark.slow
def test_the_journey_from_csv_to_a_published_model(studio, page, capsys):
    from playwright.sync_api import expect

    started = time.monotonic()
    marks: dict[str, float] = {}

    # --- Data: the real file input, the guessed mapping, the report, save ---------------------------------
    data = open_tab(page, "Data")
    expect(data.locator("#data-guide")).to_contain_text("Use a sample")  # the first-run guide
    data.locator("#data-upload input[type=file]").set_input_files(SAMPLES / "support_faq.csv")
    expect(data.locator("#data-source")).to_contain_text("50 rows, 2 columns")
    expect(data.locator("#data-source")).to_contain_text("guess")
    expect(data.get_by_label("Question / instruction", exact=True)).to_have_value("question")
    expect(data.get_by_label("Answer", exact=True)).to_have_value("answer")
    data.get_by_role("button", name="3. Check and preview").click()
    summary = data.locator("#data-summary")
    expect(summary).to_contain_text("45 training and 5 validation rows", timeout=60_000)
    expect(data.get_by_text("How do I reset my password?").first).to_be_visible()
    data.get_by_role("button", name="4. Save dataset version").click()
    expect(data.locator("#data-saved")).to_contain_text("Saved", timeout=60_000)
    dataset_id = re.search(r"ds-[0-9a-f]+", data.locator("#data-saved").inner_text()).group(0)
    expect(data.locator("#data-versions")).to_contain_text(dataset_id)
    screenshot(page, "data.png", show=data.locator("#data-summary"))
    marks["data"] = time.monotonic() - started

    # --- Train: dataset (saved after the page loaded), demo-tiny, quick-test, fit check, start --------------
    train = open_tab(page, "Train")
    pick(train, "Dataset version", dataset_id)
    expect(train.get_by_label("Base model", exact=True)).to_have_value("demo-tiny")
    pick(train, "Preset", "quick-test")
    expect(train.get_by_text("A short run to see the whole loop work")).to_be_visible()  # its settings are in
    train.get_by_role("button", name="Check fit").click()
    expect(train.locator("#train-fit")).to_contain_text("Fits", timeout=60_000)
    expect(train.locator("#train-fit")).to_contain_text("peak")
    steps = load_preset("quick-test").values()["max_steps"]
    expect(train.locator("#train-fit")).to_contain_text(f"for {steps} steps")  # quick-test's fixed length
    train.get_by_role("button", name="Start training").click()
    expect(train.locator("#train-started")).to_contain_text("was queued")
    run_id = re.search(r"run-[0-9]+-[0-9]+-[0-9a-f]+", train.locator("#train-started").inner_text()).group(0)

    # the progress bar and the loss curve move
    progress, curve = train.locator("#train-run-progress"), train.locator("#train-run-loss")
    expect(progress).to_contain_text("running", timeout=120_000)
    first = wait_for_step(progress, 0)
    curve.scroll_into_view_if_needed()
    before = curve.screenshot()
    bar_before = progress.locator("div[style*='width:']").last.get_attribute("style")
    second = wait_for_step(progress, first)  # the next refresh (every 2 s) with more steps
    assert curve.screenshot() != before, "the loss curve did not change while the run went on"
    assert progress.locator("div[style*='width:']").last.get_attribute("style") != bar_before
    if second <= steps // 4:  # a curve worth a picture
        second = wait_for_step(progress, steps // 4)
    screenshot(page, "train.png", show=progress)
    marks["training started"] = time.monotonic() - started

    # reload mid-run (at once: quick-test is quick): the run is still there, still running, further on
    page.reload()
    runs = open_tab(page, "Runs")
    expect(runs.locator("#runs-table")).to_contain_text(run_id)
    expect(runs.get_by_label("Run", exact=True)).to_have_value(re.compile(run_id))
    expect(runs.locator("#run-progress")).to_contain_text("running", timeout=60_000)
    assert wait_for_step(runs.locator("#run-progress"), second) > second
    expect(runs.locator("#run-loss g.mark-line path").first).to_be_visible(timeout=30_000)  # drawn after a reload
    screenshot(page, "runs.png")

    # ... and it finishes
    expect(runs.locator("#run-progress")).to_contain_text("succeeded", timeout=600_000)
    expect(runs.locator("#run-status")).to_contain_text("Adapter ready")
    marks["training finished"] = time.monotonic() - started

    # --- Chat: base and tuned side by side (the run finished after this page loaded) -----------------------
    chat = open_tab(page, "Chat")
    pick(chat, "Chat with", run_id)
    expect(chat.get_by_label("Right pane", exact=True)).to_have_value(run_id)
    chat.locator("#chat-input textarea").fill(QUESTION)
    chat.get_by_role("button", name="Send").click()
    answers = chat_answers(page)
    tuned, base = answers["right"], answers["left"]
    assert tuned and base and tuned != base
    screenshot(page, "chat.png")
    marks["chat"] = time.monotonic() - started

    # --- Evaluate: the golden set from its CSV, base vs tuned -------------------------------------------------
    evaluate = open_tab(page, "Evaluate")
    pick(evaluate, "Run", run_id)
    evaluate.locator("#eval-upload input[type=file]").set_input_files(SAMPLES / "support_faq_golden.csv")
    expect(evaluate.locator("#eval-golden").get_by_text("Which payment methods do you accept?").filter(
        visible=True)).to_have_count(1)
    evaluate.get_by_role("button", name="Evaluate", exact=True).click()
    expect(evaluate.locator("#eval-summary")).to_contain_text("8 questions", timeout=300_000)
    expect(evaluate.locator("#eval-summary").get_by_role("cell", name="Tuned model")).to_be_visible()
    results = evaluate.get_by_text("Which payment methods do you accept?").filter(visible=True)
    expect(results).to_have_count(2)  # in the golden set and in the results, with both answers
    screenshot(page, "evaluate.png", show=evaluate.locator("#eval-summary"))
    marks["evaluate"] = time.monotonic() - started

    # --- Publish: to the embedded endpoint, verified ----------------------------------------------------------
    publish = open_tab(page, "Publish")
    pick(publish, "Finished run", run_id)
    expect(publish.locator("#publish-plan")).to_contain_text("What will happen")
    publish.get_by_role("button", name="Publish", exact=True).click()
    result = publish.locator("#publish-result")
    expect(result).to_contain_text("verification passed", timeout=300_000)
    expect(result).to_contain_text("healthy")
    url = re.search(r"http://127\.0\.0\.1:\d+", result.inner_text()).group(0)
    screenshot(page, "publish.png", show=result)
    marks["publish"] = time.monotonic() - started

    # --- Chat with the published endpoint: it answers as the tuned model did ----------------------------------
    chat = open_tab(page, "Chat")
    pick(chat, "Chat with", url)
    expect(chat.locator("#chat-status")).to_contain_text(url)
    expect(chat.get_by_label("Right pane", exact=True)).to_have_value("")  # the published model alone, on the left
    chat.locator("#chat-input textarea").fill(QUESTION)
    chat.get_by_role("button", name="Send").click()
    published = chat_answers(page)["left"]
    assert published == tuned  # greedy answers: the published model is the tuned model
    marks["published chat"] = time.monotonic() - started

    timeline = ", ".join(f"{k} {v:.0f}s" for k, v in marks.items())
    with capsys.disabled():
        print(f"\njourney wall time {time.monotonic() - started:.0f}s ({timeline})")


@pytest.mark.slow
def test_cancel_from_the_page_while_a_second_browser_watches(browser, studio, page):
    """Two browser contexts (two people) see the same run; one cancels it; both see it stop."""
    from playwright.sync_api import expect

    version = save_qa_dataset(studio.ws, name="cancel me")
    train = open_tab(page, "Train")
    pick(train, "Dataset version", version.id)  # saved outside this page: the list refreshes when opened
    pick(train, "Preset", "quick-test")
    expect(train.get_by_text("A short run to see the whole loop work")).to_be_visible()
    train.get_by_role("button", name="Settings (the preset's values; change any of them)").click()
    steps = train.get_by_label("max steps", exact=True)
    expect(steps).to_have_value("100")  # the preset's values have arrived: typing now is not overwritten
    expect(train.get_by_label("epochs", exact=True)).to_be_disabled()  # a step count decides, not epochs
    steps.fill("5000")  # so that it cannot finish before the cancel
    steps.press("Tab")
    expect(steps).to_have_value("5000")
    train.get_by_role("button", name="Start training").click()
    expect(train.locator("#train-started")).to_contain_text("was queued")
    run_id = re.search(r"run-[0-9]+-[0-9]+-[0-9a-f]+", train.locator("#train-started").inner_text()).group(0)

    other = browser.new_context(viewport=WINDOW).new_page()
    try:
        other.goto(studio.url)
        runs = open_tab(other, "Runs")
        expect(runs.get_by_label("Run", exact=True)).to_have_value(re.compile(run_id))
        expect(runs.locator("#run-progress")).to_contain_text("running", timeout=120_000)
        expect(train.locator("#train-run-progress")).to_contain_text("running")
        runs.get_by_role("button", name="Cancel", exact=True).click()
        expect(runs.locator("#runs-message")).to_contain_text("Cancel sent")
        expect(runs.locator("#run-progress")).to_contain_text("cancelled", timeout=120_000)
        expect(train.locator("#train-run-progress")).to_contain_text("cancelled", timeout=30_000)
        expect(runs.locator("#runs-table")).to_contain_text("cancelled")
    finally:
        other.context.close()
    from studio.training import runs

    assert runs.get_run(studio.ws, run_id).config["max_steps"] == 5000  # the setting changed in the page
