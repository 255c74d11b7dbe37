"""The data report: token statistics, a length histogram, every check with its count and example rows.

It is a plain JSON-able dict (stored with the version in SQLite and meta.json); `figure` draws the
histogram with matplotlib and `as_text` writes it for the CLI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HISTOGRAM_BINS = 24

# check name -> (what it means, what to do), in the order the report lists them
CHECKS: dict[str, tuple[str, str]] = {
    "unreadable row": ("rows with more or fewer cells than the header (a delimiter inside an unquoted cell?)",
                       "put quotes around cells that contain the delimiter, or save the sheet again from Excel"),
    "not a usable chat": ("rows whose messages cell is not a valid chat", "fix the chat in the cell"),
    "empty question": ("rows with no question/instruction", "fill in the question or delete the row"),
    "empty answer": ("rows with no answer", "fill in the answer or delete the row"),
    "exact duplicate": ("rows that repeat an earlier row exactly", "nothing to do: the first copy is kept"),
    "near duplicate": ("rows equal to an earlier row apart from case, spacing or punctuation",
                       "nothing to do: the first copy is kept"),
    "too long": ("rows longer than the max length", "shorten them, raise the max length, or choose 'truncate'"),
    "leaked into validation": ("validation rows whose question is also in the training rows",
                               "remove them from the validation file"),
    "very short answers": ("answers of fewer than 3 tokens of their own", "check that they are complete"),
    "chosen same as rejected": ("preference rows whose two answers are the same (nothing to prefer)",
                                "write a different rejected answer or delete the row"),
    "label not good or bad": ("KTO rows whose label is not good/bad", "use true/false, 1/0, good/bad or 👍/👎"),
    "same question, different answers": ("questions that appear with more than one answer",
                                          "keep the answer you want the model to give"),
}


def token_stats(tokens: np.ndarray) -> dict[str, float]:
    if len(tokens) == 0:
        return {"rows": 0, "total": 0, "min": 0, "mean": 0, "median": 0, "p95": 0, "max": 0}
    return {
        "rows": int(len(tokens)), "total": int(tokens.sum()), "min": int(tokens.min()),
        "mean": round(float(tokens.mean()), 1), "median": float(np.median(tokens)),
        "p95": float(np.percentile(tokens, 95)), "max": int(tokens.max()),
    }


def histogram(tokens: np.ndarray, max_length: int) -> dict[str, list]:
    """Bins from 0 to the longest row; rows over the max length fall in the bins right of its line."""
    top = max(int(tokens.max()) if len(tokens) else 0, 1)
    edges = np.linspace(0, top, HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(tokens, bins=edges)
    return {"edges": [round(float(e), 1) for e in edges], "counts": counts.astype(int).tolist()}


def check_entry(name: str, action: str, rows: list[int], label: str, total: int | None = None) -> dict[str, Any]:
    meaning, fix = CHECKS.get(name, (name, ""))
    if name.startswith("possible personal data"):
        meaning, fix = (f"rows that seem to contain {name.split(': ', 1)[1]}",
                        "remove or mask personal data unless the model must learn it")
    return {
        "check": name, "action": action, "count": total if total is not None else len(rows),
        "rows": rows[:10], "row_label": label, "meaning": meaning, "fix": fix,
    }


def summary_line(report: dict[str, Any]) -> str:
    tokens = report["tokens"]
    return (f"{report['rows_train']} training and {report['rows_val']} validation rows kept of "
            f"{report['rows_in']} read; {report['rows_rejected']} rejected; {tokens['median']:.0f} tokens per row "
            f"(median), {tokens['max']} at most, max length {report['max_length']}.")


def as_text(report: dict[str, Any]) -> str:
    """The report for a terminal: the summary, each check, and a bar chart of the lengths."""
    lines = [summary_line(report)]
    src = report.get("source", {})
    where = f"sheet {src['sheet']!r}" if src.get("sheet") else (src.get("encoding") or "")
    lines.append(f"Source: {src.get('name')} ({src.get('format')}" + (f", {where}" if where else "")
                 + (f", delimiter {src['delimiter']!r}" if src.get("delimiter") else "") + ")"
                 + f"; template {report['template']}; tokenizer of {report['base_model']}.")
    for check in report["checks"]:
        rows = ", ".join(str(r) for r in check["rows"])
        more = "…" if check["count"] > len(check["rows"]) else ""
        lines.append(f"  [{check['action']}] {check['check']}: {check['count']} "
                     f"({check['row_label']}s {rows}{more}) - {check['fix']}")
    if not report["checks"]:
        lines.append("  every check passed")
    hist = report["histogram"]
    peak = max(hist["counts"]) or 1
    lines.append("Tokens per row:")
    for left, right, count in zip(hist["edges"], hist["edges"][1:], hist["counts"], strict=False):
        if count:
            lines.append(f"  {left:7.0f}-{right:<7.0f} {'#' * max(1, round(30 * count / peak))} {count}")
    return "\n".join(lines)


def figure(report: dict[str, Any]):
    """A matplotlib Figure of the token-length histogram with the max length drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    hist = report["histogram"]
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
    fig = Figure(figsize=(7, 2.8), layout="constrained")
    ax = fig.subplots()
    if len(counts):
        over = edges[1:] > report["max_length"]
        colors = np.where(over, "#d9534f", "#5b6abf")
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colors, edgecolor="white")
    if report["max_length"] <= edges[-1]:
        ax.axvline(report["max_length"], color="#d9534f", linestyle="--", linewidth=1.2)
        ax.text(report["max_length"], ax.get_ylim()[1] * 0.92, f" max length {report['max_length']} ",
                color="#d9534f", fontsize=8, ha="left" if report["max_length"] < edges[-1] * 0.75 else "right")
    else:
        ax.text(0.99, 0.92, f"every row is under the max length of {report['max_length']}", color="#3c763d",
                fontsize=8, ha="right", transform=ax.transAxes)
    ax.set_xlabel(f"tokens per row ({report['base_model']} tokenizer)")
    ax.set_ylabel("rows")
    ax.set_title(f"Length of each conversation as the model reads it ({report['tokens']['rows']} rows)", fontsize=10)
    return fig
