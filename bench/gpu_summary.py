"""The summary of bench/gpu_tests.sh: pass/fail counts of each pytest lane (from its JUnit XML), the headline
test's figures (timings, peak memory against the fit check's estimate, the loss curve, the 4-bit -> merged
drift) and the versions, into OUT/results.json and OUT/results.md (the block for bench/RESULTS.md).

    python bench/gpu_summary.py OUT
Standard library only: it runs where the studio's dependencies may be missing.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

GIB = 1024**3


def lane_counts(junit: Path) -> dict:
    """passed / failed / errors / skipped of one pytest run, with the failing and skipped tests named."""
    if not junit.exists():
        return {"ran": False}
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {"ran": True, "tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "seconds": 0.0,
           "failing": [], "skipped_because": []}
    for suite in suites:
        out["seconds"] += float(suite.get("time") or 0)
        for case in suite.iter("testcase"):
            out["tests"] += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            if case.find("failure") is not None:
                out["failed"] += 1
                out["failing"].append(name)
            elif case.find("error") is not None:
                out["errors"] += 1
                out["failing"].append(name)
            elif (skip := case.find("skipped")) is not None:
                out["skipped"] += 1
                out["skipped_because"].append(f"{name}: {skip.get('message', '')}")
            else:
                out["passed"] += 1
    out["seconds"] = round(out["seconds"], 1)
    return out


def summarize(out: Path) -> dict:
    env = (out / "env.txt").read_text() if (out / "env.txt").exists() else ""
    result = {
        "env": env.splitlines(),
        "lanes": {p.stem.removeprefix("junit-"): lane_counts(p) for p in sorted(out.glob("junit-*.xml"))},
        "headline": json.loads((out / "headline-gpu.json").read_text()) if (out / "headline-gpu.json").exists()
        else None,
        "script_seconds": _read_int(out / "seconds.txt"),
        "nvidia_smi_peak_mib": _peak_mib(out / "gpu-memory.csv"),
        "cuda": (out / "no-cuda.txt").exists() is False,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(markdown(result))
    return result


def _peak_mib(path: Path) -> int | None:
    """The largest memory.used (MiB) nvidia-smi sampled, once a second, over the whole script."""
    if not path.exists():
        return None
    used = [int(line.rsplit(",", 1)[1]) for line in path.read_text().splitlines()
            if "," in line and line.rsplit(",", 1)[1].strip().isdigit()]
    return max(used) if used else None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def markdown(result: dict) -> str:
    lines = ["### GPU test lane (bench/gpu_tests.sh)", ""]
    lines += [f"    {line}" for line in result["env"]]
    if not result["cuda"]:
        lines += ["", "**No CUDA GPU: the gpu lane did not run on a GPU.**"]
    lines += ["", "| lane | passed | failed | errors | skipped | seconds |", "|---|---|---|---|---|---|"]
    for name, lane in result["lanes"].items():
        if lane.get("ran"):
            lines.append(f"| {name} | {lane['passed']} | {lane['failed']} | {lane['errors']} | {lane['skipped']} | "
                         f"{lane['seconds']} |")
        else:
            lines.append(f"| {name} | not run | | | | |")
    for name, lane in result["lanes"].items():
        for failing in lane.get("failing", []):
            lines.append(f"- {name}: FAILED {failing}")
    h = result["headline"]
    if h:
        fit = h.get("fit_check", {})
        lines += ["", f"Headline path on a {h.get('shape')} shape, {h.get('steps')} steps of the balanced preset:", ""]
        if h.get("failed"):
            lines += [f"- **the headline test failed**: {h['failed'][:400]}", ""]
        lines.append("| stage | seconds |")
        lines.append("|---|---|")
        lines += [f"| {stage} | {s} |" for stage, s in h.get("seconds", {}).items()]
        if h.get("peak_allocated_bytes") and fit.get("peak_bytes"):
            lines += ["", f"- peak memory allocated by torch in training: {h['peak_allocated_bytes'] / GIB:.2f} GiB; "
                      f"the fit check's estimate: {fit['peak_bytes'] / GIB:.2f} GiB (measured / estimate = "
                      f"{h['peak_vs_estimate']})"]
        if h.get("losses"):
            lines.append(f"- loss: {h['losses'][0]:.3f} -> {h['losses'][-1]:.3f} ({len(h['losses'])} logged points); "
                         f"{h.get('tokens_per_second')} tokens/s at the end")
        d, v = h.get("drift") or {}, h.get("verification") or {}
        if d:
            lines.append(f"- 4-bit Chat -> merged {v.get('export_precision')} drift: {d.get('identical')} of "
                         f"{d.get('prompts')} replies identical, mean token agreement {d.get('mean_agreement')}, "
                         f"lowest {d.get('min_agreement')}, first difference at token {d.get('first_difference')}; "
                         f"within tolerance: {d.get('within_tolerance')}")
        if v:
            lines.append(f"- verification: {v.get('verdict')} — {v.get('summary')}")
    if result.get("nvidia_smi_peak_mib") is not None:
        lines.append(f"- the GPU's memory in use at most (nvidia-smi, every process, once a second): "
                     f"{result['nvidia_smi_peak_mib'] / 1024:.2f} GiB")
    if result.get("script_seconds") is not None:
        lines += ["", f"Script wall time: {result['script_seconds']} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    summary = summarize(Path(sys.argv[1]))
    print(markdown(summary))
