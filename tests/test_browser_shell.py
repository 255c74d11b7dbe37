"""The studio in a real browser: the page loads, tabs switch, the System tab shows the machine."""

import pytest
from browser import WINDOW, chromium, open_tab, screenshot, studio_process
from conftest import free_port

pytestmark = pytest.mark.browser


def test_system_tab_in_the_browser(tmp_path):
    with studio_process(tmp_path / "home", free_port()) as url, chromium() as browser:
        page = browser.new_page(viewport=WINDOW)
        page.goto(url)
        facts = open_tab(page, "System").locator("#system-facts")
        facts.get_by_role("cell", name="Workspace", exact=True).wait_for(timeout=30_000)
        assert str(tmp_path / "home") in facts.inner_text()
        screenshot(page, "system.png")


def test_every_control_says_what_it_is_for(ws):
    """The first-run promise: each control a person can change carries help text in plain words."""
    import gradio as gr

    from studio.ui.app import build_app

    inputs = (gr.Textbox, gr.Dropdown, gr.Number, gr.Slider, gr.Radio, gr.Checkbox, gr.CheckboxGroup)
    silent = [f"{type(b).__name__} '{b.label}'" for b in build_app(ws).blocks.values()
              if isinstance(b, inputs) and b.interactive is not False and not (b.info or "").strip()]
    assert not silent, silent
