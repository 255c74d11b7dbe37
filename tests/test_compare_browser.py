"""Comparing two finished runs in a real browser at laptop size (1366x768): both loss curves on one chart,
the settings that differ, the scores chart, and the lineage of the chosen run; takes docs/screenshots/compare.png."""

import pytest
from browser import SCREENSHOTS, chromium, open_tab, studio_process
from conftest import free_port

pytestmark = pytest.mark.browser


def test_compare_two_finished_runs_in_the_browser(compared_runs):
    from playwright.sync_api import expect

    first, second = compared_runs.first, compared_runs.second
    with studio_process(compared_runs.ws.home, free_port()) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(url)
        runs = open_tab(page, "Runs")
        # the chosen run (the newest: the continued one) shows where it came from
        expect(runs.locator("#run-lineage")).to_contain_text(f"run {first}", timeout=30_000)
        expect(runs.locator("#run-lineage")).to_contain_text("this run")

        runs.get_by_role("button", name="Compare runs").click()  # folded until asked for
        picker = runs.locator("#compare-pick")
        for run_id in (first, second):
            picker.locator("input").click()
            page.get_by_role("option", name=run_id).first.click()
        page.keyboard.press("Escape")
        runs.locator("#compare-go").click()

        # one chart, four lines: each run's training and held-out loss
        expect(runs.locator("#compare-loss g.mark-line path")).to_have_count(4, timeout=30_000)
        settings = runs.locator("#compare-settings")
        for text in ("learning_rate", "0.003", "0.001", "max_steps", "continues run"):
            expect(settings).to_contain_text(text)
        expect(settings).not_to_contain_text("lora_r")  # the same in both runs: not shown
        # the scores chart: three scores for each run and for the base model
        expect(runs.locator("#compare-scores g.mark-rect path")).to_have_count(9)
        expect(runs.locator("#compare-data")).to_contain_text("+2 rows added")
        expect(runs.locator("#compare-outcomes")).to_contain_text(compared_runs.deployment_id)

        runs.locator("#compare").scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "compare.png"))
