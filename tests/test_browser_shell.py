"""The studio in a real browser: the page loads, tabs switch, the System tab shows the machine."""

import pytest

from browser import CHROMIUM_ARGS, SCREENSHOTS, chromium_path, studio_process
from conftest import free_port

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_system_tab_in_the_browser(chromium, tmp_path):
    with studio_process(tmp_path / "home", free_port()) as url:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="System").click()
        facts = page.locator("#system-facts")
        facts.get_by_role("cell", name="Workspace", exact=True).wait_for(timeout=30_000)
        assert str(tmp_path / "home") in facts.inner_text()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "system.png"), full_page=True)
