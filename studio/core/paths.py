"""Where the studio's own files are: the project root (the training and endpoint processes put it on
their PYTHONPATH), the assets (model catalog, demo corpus, samples, CSS) and the training presets."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ASSETS = PROJECT_ROOT / "assets"
SAMPLES = ASSETS / "samples"
PRESETS_DIR = PROJECT_ROOT / "presets"
