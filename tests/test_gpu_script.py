"""bench/gpu_tests.sh and its summary, on whatever machine runs the suite: without CUDA (forced with
CUDA_VISIBLE_DEVICES="") it says so and runs nothing; with ALLOW_CPU=1 its whole flow runs (the gpu tests skip,
saying why) and the summary counts each lane from its JUnit XML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import gpu_summary  # noqa: E402


def script(out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_tests.sh")], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable,
                                                      "SKIP_WHEELS": "1", "CUDA_VISIBLE_DEVICES": "", **env})


@pytest.mark.slow
def test_without_cuda_it_says_so_and_runs_nothing(tmp_path):
    done = script(tmp_path / "out")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "No CUDA GPU here (torch.cuda.is_available() is False)" in done.stdout
    assert "Nothing was run" in done.stdout and not list((tmp_path / "out").glob("junit-*.xml"))
    env = (tmp_path / "out" / "env.txt").read_text()
    assert "transformers" in env and "cuda" in env and "MISSING" not in env
    assert "**No CUDA GPU: the gpu lane did not run on a GPU.**" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.slow
def test_its_whole_flow_runs_and_counts_each_lane(tmp_path):
    out = tmp_path / "out"
    done = script(out, ALLOW_CPU="1", DEVICE_K="tied_embeddings",
                  DEVICE_TESTS="tests/test_models_params.py")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "results.json").read_text())
    gpu, device = result["lanes"]["gpu"], result["lanes"]["device"]
    assert gpu["skipped"] == 1 and gpu["passed"] == 0 and "needs a CUDA GPU" in gpu["skipped_because"][0]
    assert device["passed"] == 1 and device["failed"] == 0
    text = (out / "results.md").read_text()
    assert "| gpu | 0 | 0 | 0 | 1 |" in text and "| device | 1 | 0 | 0 | 0 |" in text
    assert result["script_seconds"] > 0 and (out / "log.txt").exists()


def test_the_summary_reports_the_headline_figures(tmp_path):
    (tmp_path / "env.txt").write_text("torch 2.11.0\ngpu NVIDIA H200 (9, 0) 139.8 GiB\n")
    (tmp_path / "gpu-memory.csv").write_text("2026/12/02 10:00:00.000, 1024\n2026/12/02 10:00:01.000, 6144\n")
    (tmp_path / "headline-gpu.json").write_text(json.dumps({
        "shape": "meta-llama/Llama-3.2-1B-Instruct", "steps": 40, "seconds": {"train": 61.2, "export_merged": 30.5},
        "fit_check": {"peak_bytes": 6 * 1024**3}, "peak_allocated_bytes": 4.5 * 1024**3, "peak_vs_estimate": 0.75,
        "losses": [11.9, 9.2, 7.4], "tokens_per_second": 30000.0,
        "drift": {"prompts": 3, "identical": 1, "mean_agreement": 0.82, "min_agreement": 0.6, "first_difference": 5,
                  "within_tolerance": True},
        "verification": {"verdict": "passed", "summary": "All 3 replies match.", "export_precision": "bfloat16"}}))
    result = gpu_summary.summarize(tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert result["nvidia_smi_peak_mib"] == 6144 and "6.00 GiB" in text
    assert "| train | 61.2 |" in text and "4.50 GiB; the fit check's estimate: 6.00 GiB" in text
    assert "loss: 11.900 -> 7.400" in text and "mean token agreement 0.82" in text
    assert "first difference at token 5" in text and "verification: passed" in text
