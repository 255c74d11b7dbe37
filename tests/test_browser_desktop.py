"""The studio as a desktop window, in headless Chromium against a real `python app.py`: every tab fits a 1366x768
laptop (and a 1920x1080 screen) without sideways scrolling, its main action on screen; the dark theme follows
the system; the status strip follows a run on every tab and opens it; a run that ends says so (a toast with a
link, and the browser's own notification when the page is in the background and notifications are allowed)."""

from __future__ import annotations

import re

import pytest
from browser import chromium, open_tab, studio_with_demo
from conftest import free_port, save_qa_dataset

pytestmark = pytest.mark.browser

LAPTOP, DESKTOP = {"width": 1366, "height": 768}, {"width": 1920, "height": 1080}
# each tab's main action: on screen, without scrolling, when the tab opens
MAIN_ACTION = {
    "Data": "#data-upload", "Train": "button:text-is('Start training')", "Runs": "#runs-table",
    "Chat": "button:text-is('Send')", "Evaluate": "button:text-is('Evaluate')",
    "Publish": "button:text-is('Publish')", "System": "#system-facts",
}
# page-side hooks, before the studio's own scripts: a recording window.Notification, and a page that can be
# put "in the background" (document.hidden) while the test watches it
HOOKS = """
window.__notified = [];
const RealNotification = window.Notification;
window.Notification = class extends RealNotification {
  constructor(title, options) { super(title, options); window.__notified.push({title, body: options && options.body}); }
};
Object.defineProperty(Document.prototype, 'hidden', {get() { return window.__background === true; }});
"""


@pytest.fixture(scope="module")
def studio(tmp_path_factory, demo_model_source):
    home = tmp_path_factory.mktemp("desktop") / "studio-home"
    with studio_with_demo(home, demo_model_source, free_port()) as (url, ws):
        yield url, ws


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def fits(page) -> dict:
    return page.evaluate("() => ({scroll: document.documentElement.scrollWidth, window: window.innerWidth})")


def test_every_tab_fits_a_laptop_window_in_both_themes(browser, studio):
    url, _ = studio
    for viewport, scheme in ((LAPTOP, "light"), (LAPTOP, "dark"), (DESKTOP, "light")):
        context = browser.new_context(viewport=viewport, color_scheme=scheme)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        page.locator("#studio-strip .studio-strip-item").first.wait_for()
        try:
            for tab, action in MAIN_ACTION.items():
                panel = open_tab(page, tab)
                page.evaluate("window.scrollTo(0, 0)")
                width = fits(page)
                assert width["scroll"] <= width["window"], f"{tab} scrolls sideways at {viewport}: {width}"
                box = panel.locator(action).first.bounding_box()
                assert box and box["y"] + min(box["height"], 40) <= viewport["height"], \
                    f"{tab}: its main action ({action}) is below the fold at {viewport}: {box}"
                assert page.locator("#studio-strip").is_visible(), f"no status strip on {tab}"
                if tab == "Train":  # nothing to apply before a fit check has suggested a change
                    assert panel.get_by_role("button", name="Apply the change that fits").is_disabled()
            if scheme == "dark":  # the system's dark theme is followed, and the strip stays readable on it
                assert page.evaluate("document.body.classList.contains('dark')")
                colours = page.locator("#studio-strip .studio-strip-item").first.evaluate(
                    "e => [getComputedStyle(e).color, getComputedStyle(document.body).backgroundColor]")
                text, ground = (sum(map(int, re.findall(r"\d+", c)[:3])) for c in colours)
                assert text > ground + 300, f"strip text {colours[0]} on {colours[1]}"
        finally:
            context.close()


def test_the_strip_follows_a_run_everywhere_and_its_end_is_announced(browser, studio):
    from playwright.sync_api import expect

    from studio.training import scheduler, submit
    from studio.training.presets import build_config
    from studio.training.runs import list_runs

    expect.set_options(timeout=30_000)
    url, ws = studio
    context = browser.new_context(viewport=LAPTOP)
    context.grant_permissions(["notifications"], origin=url)
    context.add_init_script(HOOKS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    strip = page.locator("#studio-strip")
    expect(strip).to_contain_text("No run training")
    expect(strip.locator("[data-action=notify]")).to_be_hidden()  # allowed already: nothing to ask
    try:
        version = save_qa_dataset(ws, name="strip")
        long = submit.submit(ws, build_config("demo-tiny", version.id, "quick-test", {"max_steps": 5000}),
                             preset="quick-test", name="long one")
        short = submit.submit(ws, build_config("demo-tiny", version.id, "quick-test", {"max_steps": 4}),
                              preset="quick-test", name="short one")
        item = strip.locator(".studio-strip-item.run")
        expect(item).to_contain_text("long one", timeout=120_000)
        expect(strip).to_contain_text("1 queued")
        expect(item).to_have_attribute("title", re.compile(r"step [1-9]\d*/5000"), timeout=120_000)
        for tab in MAIN_ACTION:  # the same strip, with the run's progress, on every tab
            open_tab(page, tab)
            expect(item).to_be_visible()
            expect(item).to_contain_text(re.compile(r"long one \d+%"))
        # a click on the run opens it in the Runs tab
        item.click()
        runs = page.get_by_role("tabpanel").filter(visible=True)
        expect(page.get_by_role("tab", name="Runs", exact=True)).to_have_attribute("aria-selected", "true")
        expect(runs.get_by_label("Run", exact=True)).to_have_value(re.compile(long.id))

        # the long run is cancelled, the short one starts and finishes while the page is in the background
        open_tab(page, "Data")
        page.evaluate("window.__background = true")
        scheduler.cancel(ws, long.id)
        cancelled = page.locator(".toast-body").filter(has_text="was cancelled")
        expect(cancelled).to_be_visible(timeout=120_000)
        finished = page.locator(".toast-body").filter(has_text="Run short one finished")
        expect(finished).to_be_visible(timeout=180_000)
        expect(finished).to_contain_text(f"{short.id} succeeded after 4 steps")
        notified = page.evaluate("window.__notified")
        assert any(n["title"] == "Run short one finished" and n["body"].startswith(f"{short.id} succeeded after 4")
                   for n in notified), notified
        assert any(n["title"] == "Run long one was cancelled" for n in notified), notified

        # the toast's link opens the run
        page.evaluate("window.__background = false")
        page.locator(f'.toast-body a[href="#studio-run={short.id}"]').click()
        expect(page.get_by_role("tab", name="Runs", exact=True)).to_have_attribute("aria-selected", "true")
        expect(runs.get_by_label("Run", exact=True)).to_have_value(re.compile(short.id))
        expect(strip).to_contain_text("No run training")
    finally:
        for run in list_runs(ws):
            if run.status in ("queued", "running"):
                scheduler.cancel(ws, run.id)
        context.close()


def test_a_tab_polls_only_while_it_is_shown(browser, studio):
    """An open page costs the server the strip's refresh, plus the poll of the one tab being looked at: the Runs
    tab's timer ticks while Runs is shown and stops when another tab is picked."""
    import json
    import time

    url, _ = studio
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    sent: list[tuple[float, int]] = []  # (when, which event) of every request to the server's queue
    page.on("request", lambda r: sent.append((time.monotonic(), json.loads(r.post_data or "{}").get("fn_index")))
            if "queue/join" in r.url else None)
    try:
        page.goto(url)
        page.locator("#studio-strip .studio-strip-item").first.wait_for(timeout=30_000)

        def events_during(seconds: float) -> set:
            start = time.monotonic()
            page.wait_for_timeout(seconds * 1000)
            return {fn for at, fn in sent if at >= start}

        on_data = events_during(5)
        open_tab(page, "Runs")
        on_runs = events_during(5)
        open_tab(page, "Chat")
        page.wait_for_timeout(500)
        on_chat = events_during(5)
    finally:
        context.close()
    assert on_data, "the status strip did not refresh on the Data tab"
    assert on_runs - on_data, f"the Runs tab did not poll while shown: {on_runs} against the strip's {on_data}"
    assert on_chat <= on_data, f"the Runs tab still polls from the Chat tab: {on_chat - on_data}"


def test_the_newest_dataset_version_is_picked_and_a_later_one_does_not_replace_it(browser, studio):
    """A fresh page shows the newest saved version picked in the Train tab; one saved later does not replace
    it while the Train tab's timer ticks (studio/ui/picks.py; the empty-list case is in test_training_ui)."""
    from playwright.sync_api import expect

    url, ws = studio
    first = save_qa_dataset(ws, name="picked on load")
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    try:
        page.goto(url)
        train = open_tab(page, "Train")
        picker = train.get_by_label("Dataset version", exact=True)
        expect(picker).to_have_value(re.compile(first.id), timeout=30_000)
        later = save_qa_dataset(ws, name="saved later")
        page.wait_for_timeout(5_000)  # two ticks of the Train tab's timer
        assert later.id != first.id and first.id in picker.input_value()
    finally:
        context.close()
