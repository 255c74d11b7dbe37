"""Support for the browser tests: a real studio process and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "docs" / "screenshots"
# Keep the browser off the network: only the studio on 127.0.0.1 is reached.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]  # fmt: skip


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("Debian's chromium is not installed: run `make test` (it installs it) "
                           "or `apt-get install chromium`.")
    return path


@contextmanager
def studio_process(home: Path, port: int, extra_env: dict | None = None):
    """`python app.py` on 127.0.0.1:port with its own workspace, until the block ends."""
    env = {**os.environ, "STUDIO_HOME": str(home), **(extra_env or {})}
    env.pop("HF_HUB_OFFLINE", None)
    log = open(home.parent / f"studio-{port}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the studio did not start:\n" + Path(log.name).read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def chromium():
    """Debian's Chromium under Playwright, headless and off the network."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_tab(page, name: str):
    """Click a top-level tab; return its panel (only the shown panel, as tabs keep their DOM once opened)."""
    page.get_by_role("tab", name=name, exact=True).click()
    panel = page.get_by_role("tabpanel").filter(visible=True)
    panel.wait_for()
    return panel


def pick(scope, label: str, option: str) -> None:
    """Choose an option of a Gradio dropdown by its label and (part of) the option's text."""
    scope.get_by_label(label, exact=True).click()
    page = scope if hasattr(scope, "goto") else scope.page
    page.get_by_role("option", name=option).first.click()


# the README's pictures: what a 13" laptop's browser window shows (1366x768), not a long scrolled page
WINDOW = {"width": 1366, "height": 768}


def screenshot(page, name: str, show=None) -> None:
    """The window as it is, at WINDOW's size; `show` (a locator) is scrolled into view first."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    if show is not None:
        show.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / name))


@contextmanager
def studio_with_demo(home: Path, demo_model_source: Path, port: int):
    """A studio process on a fresh workspace whose demo-tiny is the session's build; yields (url, workspace).
    The endpoints that chat, evaluation and publishing start outlive the studio by design: stopped here."""
    from studio.core.workspace import Workspace
    from studio.serving import endpoints

    ws = Workspace.open(home)
    (ws.models_dir / "demo-tiny").symlink_to(demo_model_source, target_is_directory=True)
    try:
        with studio_process(ws.home, port) as url:
            yield url, ws
    finally:
        for ep in endpoints.list_endpoints(ws, include_stopped=False):
            if ep.kind == "local":  # remote ones were only registered, not started
                endpoints.stop_endpoint(ws, ep.id, reason="test over")
