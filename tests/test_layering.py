"""The core never imports gradio: the CLI, the training and the endpoint processes stay light."""

import ast
import subprocess
import sys
from pathlib import Path

STUDIO = Path(__file__).resolve().parents[1] / "studio"


def test_no_core_module_imports_gradio():
    offenders = []
    for path in STUDIO.rglob("*.py"):
        if "ui" in path.relative_to(STUDIO).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "gradio" or n.startswith("gradio.") for n in names):
                offenders.append(str(path.relative_to(STUDIO)))
    assert offenders == []


def test_cli_import_leaves_gradio_and_torch_unloaded():
    code = "import sys, studio.cli, studio.core.workspace; studio.cli.build_parser(); " \
           "print('gradio' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
