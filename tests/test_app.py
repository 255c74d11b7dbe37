"""The Gradio app builds, serves its page, and the System tab's handler reports the machine."""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_system_tab_renders_the_report(ws):
    from studio.core.system import report
    from studio.ui.system_tab import render

    md = render(report(ws))
    assert "Workspace" in md and str(ws.home) in md and "transformers" in md


def test_app_builds_with_every_tab(ws):
    from studio.ui.app import TABS, build_app

    app = build_app(ws)
    labels = [b.label for b in app.blocks.values() if type(b).__name__ == "Tab"]
    assert labels == [t[0] for t in TABS]


def test_app_serves_the_page_on_a_free_port(studio_home):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    body = resp.read().decode()
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "the studio did not serve its page in 90 s"
                time.sleep(0.5)
        assert "LLMOps Studio" in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)
