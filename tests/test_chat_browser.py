"""The Chat tab in a real browser: pick the trained run, ask, see base and tuned side by side, press
thumbs-down under the tuned answer, correct it, and find the correction in a new dataset version."""

import re
import time

import pytest
from browser import CHROMIUM_ARGS, chromium_path, studio_process
from conftest import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_chat_side_by_side_and_correct_an_answer(trained_run):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    from studio.data.store import list_versions, load_split
    from studio.evaluation import feedback
    from studio.serving import endpoints

    ws = trained_run.ws
    with studio_process(ws.home, free_port()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Chat").click()
            page.get_by_label("Chat with").click()
            page.get_by_role("option", name=trained_run.run_id).click()
            page.locator("#chat-input textarea").fill("How do I reset my password?")
            page.locator("#chat-input textarea").press("Enter")  # as the box says: Enter sends (the journey clicks)
            right = page.locator("#chat-right")
            right.get_by_text("Forgot password").wait_for(timeout=90_000)
            page.locator("#chat-left .message.bot").first.wait_for(timeout=30_000)
            # as a person reads the answers once they are written: both panes done streaming (the base model
            # writes up to 256 tokens of noise, slowly on a busy machine), then the thumbs-down
            _until_still(page.locator("#chat-left .message.bot").first, seconds=1.5, timeout=120)
            right.get_by_label("Dislike").first.click()
            corrected = page.get_by_label("The correct answer")
            # the thumbs-down's handler puts the answer in the box to be edited; typing starts after that
            expect(corrected).to_have_value(re.compile("Forgot password"), timeout=30_000)
            fix = "Choose Forgot password on the sign-in page; the emailed link works for 30 minutes."
            corrected.fill(fix)
            time.sleep(1.0)
            assert corrected.input_value() == fix, f"the typed correction was replaced by {corrected.input_value()!r}"
            # pressing the thumb again undoes it, pressing once more disagrees again: what was typed stays
            right.get_by_label("Disliked").first.click()
            right.get_by_label("Dislike", exact=True).first.click()
            time.sleep(1.0)
            assert corrected.input_value() == fix, f"the typed correction was replaced by {corrected.input_value()!r}"
            page.get_by_role("button", name="Save as a training row").click()
            saved = page.get_by_text("Saved. Dataset version")
            try:
                saved.wait_for(timeout=60_000)  # a new dataset version: its token report loads the tokenizer
            except PlaywrightTimeout:
                said = page.locator(".toast-body").all_inner_texts()
                pytest.fail(f"no 'Saved. Dataset version' 60 s after Save; the page's messages: {said}; the "
                            f"correction box holds {corrected.input_value()!r}")
        finally:
            browser.close()
            for ep in endpoints.list_endpoints(ws, include_stopped=False):
                if trained_run.run_id in ep.adapters:
                    endpoints.stop_endpoint(ws, ep.id)
    standing = feedback.thumbs(ws)  # the thumbs-down, undone and given again, stands once
    assert [(t["model"], t["liked"]) for t in standing] == [("right", False)], standing
    version = max((v for v in list_versions(ws) if v.mapping.get("feedback_of") == trained_run.dataset_id),
                  key=lambda v: v.mapping["corrections"])
    last = load_split(ws, version.id, "train").to_list()[-1]["messages"]
    assert last == [{"role": "user", "content": "How do I reset my password?"},
                    {"role": "assistant", "content": "Choose Forgot password on the sign-in page; the emailed link "
                                                     "works for 30 minutes."}]


def _until_still(locator, *, seconds: float, timeout: float) -> None:
    """Until the element's text has not changed for `seconds` (a stream that ended)."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        text = locator.inner_text()
        if text != last:
            last, since = text, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.25)
    raise AssertionError(f"the answer was still changing after {timeout} s")
