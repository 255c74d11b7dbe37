"""Runs side by side, after the second run: their loss curves on one chart, the settings that differ (from
the frozen configs), their scores on every golden set all of them were evaluated on, their data (the dataset
versions and the rows added, removed and changed between them) and what became of them (exports,
deployments). It reads every stage, so it sits at the top of the pipeline, beside lineage.py. Read only, for
the Runs tab and `studio runs compare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.core.errors import InvalidInput, NotFound
from studio.data.store import get_version
from studio.evaluation.runner import list_evaluations
from studio.evaluation.scores import SCORES
from studio.publishing.lineage import outcomes
from studio.training.runs import Run, get_run
from studio.training.summary import summarize

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

METRICS = (*SCORES, "loss", "perplexity")  # per evaluation: the tuned model's scores (loss: its own val split)
MAX_RUNS = 8  # more lines than one chart (and a person) can tell apart


def compare(ws: Workspace, run_ids: list[str]) -> dict[str, Any]:
    """Everything the comparison shows, as data: runs, curves, settings, scores, data, outcomes."""
    ids = list(dict.fromkeys(r.strip() for r in run_ids if r and r.strip()))
    if len(ids) < 2:
        raise InvalidInput(f"Comparing needs two runs or more; got {len(ids)}.",
                           "Pick two or more runs (`studio runs compare RUN RUN`, or the Runs tab's list).")
    if len(ids) > MAX_RUNS:
        raise InvalidInput(f"{len(ids)} runs are too many for one chart.", f"Compare at most {MAX_RUNS} at a time.")
    found = [get_run(ws, r) for r in ids]
    return {
        "runs": [_brief(r) for r in found],
        "curves": curves(found),
        "settings": settings_diff(found),
        "scores": shared_scores(ws, ids),
        "data": data_changes(ws, found),
        "outcomes": {r.id: outcomes(ws, r.id) for r in found},
    }


def _brief(run: Run) -> dict[str, Any]:
    return {"id": run.id, "name": run.name, "status": run.status, "base_model": run.base_model,
            "dataset_id": run.dataset_id, "preset": run.preset, "objective": run.config.get("objective", "sft"),
            "step": run.step, "max_steps": run.max_steps, "loss": run.loss, "eval_loss": run.eval_loss,
            "continues": (run.folder.read_manifest().get("parent") or {}).get("run_id")}


# --- curves ----------------------------------------------------------------------------------------


def curves(found: list[Run]) -> list[dict[str, Any]]:
    """One point per logged step: {"run", "curve" ("training loss" | "held-out loss"), "step", "loss"}."""
    points = []
    for run in found:
        summary = summarize(run.folder)
        points += [{"run": run.id, "curve": "training loss", "step": e["step"], "loss": e["loss"]}
                   for e in summary["steps"] if e.get("loss") is not None]
        points += [{"run": run.id, "curve": "held-out loss", "step": e["step"], "loss": e["eval_loss"]}
                   for e in summary["evals"] if e.get("eval_loss") is not None]
    return points


# --- settings --------------------------------------------------------------------------------------


def settings_diff(found: list[Run]) -> dict[str, Any]:
    """The settings whose values are not the same in every run: {"differ": [{"setting", "values": {run: v}}],
    "same": how many settings agree}. From each run's frozen config, plus its preset and the run it continues."""
    flat = {}
    for run in found:
        values = _flatten(run.config)
        values["preset"] = run.preset or None
        values["continues run"] = (run.folder.read_manifest().get("parent") or {}).get("run_id")
        flat[run.id] = values
    keys = list(dict.fromkeys(k for values in flat.values() for k in values))
    differ = [{"setting": k, "values": {r: flat[r].get(k) for r in flat}} for k in keys
              if len({json.dumps(flat[r].get(k), sort_keys=True, default=str) for r in flat}) > 1]
    return {"differ": differ, "same": len(keys) - len(differ)}


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- scores ----------------------------------------------------------------------------------------


def shared_scores(ws: Workspace, ids: list[str]) -> dict[str, Any]:
    """Every golden set each run was evaluated on (the same questions: the same hash), newest first, with each
    run's newest evaluation on it; and, when there is none, which sets each run does have."""
    per_run = {r: list_evaluations(ws, run_id=r) for r in ids}
    newest: dict[str, dict[str, Any]] = {}  # golden hash -> run -> its newest evaluation on it
    for run_id, evaluations in per_run.items():
        for ev in evaluations:  # newest first
            newest.setdefault(ev.golden_hash, {}).setdefault(run_id, ev)
    shared = [h for h in newest if len(newest[h]) == len(ids)]
    shared.sort(key=lambda h: max(ev.created_at for ev in newest[h].values()), reverse=True)
    sets = []
    for golden in shared:
        evs = [newest[golden][r] for r in ids]
        base = evs[0].summary.get("base", {})
        sets.append({
            "golden_hash": golden, "name": evs[0].golden_set, "kind": evs[0].kind,
            "questions": evs[0].summary.get("questions"),
            "runs": {ev.run_id: {"evaluation": ev.id, "created_at": ev.created_at,
                                 **{m: ev.summary.get("tuned", {}).get(m) for m in METRICS}} for ev in evs},
            "base": {m: base.get(m) for m in METRICS},
        })
    return {"shared": sets,
            "per_run": {r: sorted({f"{ev.golden_set} ({ev.golden_hash})" for ev in evs}) for r, evs in per_run.items()}}


# --- data ------------------------------------------------------------------------------------------


def data_changes(ws: Workspace, found: list[Run]) -> dict[str, Any]:
    """The runs' dataset versions, and from each version to the next one in the order of the runs: the rows
    added, removed and changed (same question, other answer), counted on the distinct rows of both splits."""
    versions, order = {}, []
    for run in found:
        if run.dataset_id in versions:
            continue
        try:
            v = get_version(ws, run.dataset_id)
            versions[v.id] = {"id": v.id, "name": v.name, "kind": v.kind, "rows_train": v.rows_train,
                              "rows_val": v.rows_val, "created_at": v.created_at, "path": v.path}
        except NotFound:
            versions[run.dataset_id] = {"id": run.dataset_id, "deleted": True}
        order.append(run.dataset_id)
    changes = [row_changes(versions[a], versions[b]) for a, b in zip(order, order[1:], strict=False)]
    return {"versions": [versions[v] for v in order], "changes": changes,
            "by_run": {r.id: r.dataset_id for r in found}}


def row_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Rows added, removed and changed from version `old` to version `new` (a row whose question stays and
    whose answer differs is one changed row, not one added and one removed)."""
    change: dict[str, Any] = {"from": old["id"], "to": new["id"]}
    if old.get("deleted") or new.get("deleted"):
        return change | {"error": "a version was deleted; its rows cannot be compared"}
    before, after = _rows(old["path"]), _rows(new["path"])
    gone, came = set(before) - set(after), set(after) - set(before)
    gone_keys, came_keys = {before[r] for r in gone}, {after[r] for r in came}
    changed = gone_keys & came_keys
    return change | {
        "added": sum(1 for r in came if after[r] not in changed),
        "removed": sum(1 for r in gone if before[r] not in changed),
        "changed": len(changed), "unchanged": len(set(before) & set(after)),
        "rows_before": len(before), "rows_after": len(after),
    }


def _rows(path: str) -> dict[str, str]:
    """Each distinct row of a version (train and val) as JSON -> its key: the conversation up to the answer
    (SFT), the prompt (preference, KTO), else the first column."""
    import pyarrow.parquet as pq  # a library, not a stage: loaded only when two versions' rows are compared

    rows: dict[str, str] = {}
    for split in ("train", "val"):
        file = Path(path) / f"{split}.parquet"
        if not file.is_file():
            continue
        for row in pq.read_table(file).to_pylist():
            text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
            if "messages" in row:
                key = row["messages"][:-1]
            elif "prompt" in row:
                key = row["prompt"]
            else:
                key = next(iter(row.values()), None)
            rows[text] = json.dumps(key, sort_keys=True, ensure_ascii=False, default=str)
    return rows


# --- in words (the CLI) ----------------------------------------------------------------------------


def comparison_text(found: dict[str, Any]) -> str:
    """The comparison as plain text: one block per part."""
    ids = [r["id"] for r in found["runs"]]
    lines = ["runs"]
    for r in found["runs"]:
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        held = f"{r['eval_loss']:.4f}" if r["eval_loss"] is not None else "-"
        lines.append(f"  {r['id']}  {r['status']:<9} step {r['step'] or 0}/{r['max_steps'] or '?'}  loss {loss}  "
                     f"held-out {held}  '{r['name']}'")
    settings = found["settings"]
    lines.append(f"settings that differ ({len(settings['differ'])}; {settings['same']} the same)")
    for item in settings["differ"]:
        lines.append(f"  {item['setting']}: " + " | ".join(_value(item["values"][r]) for r in ids))
    scores = found["scores"]
    if scores["shared"]:
        for s in scores["shared"]:
            lines.append(f"scores on golden set '{s['name']}' ({s['questions']} questions, {s['golden_hash']})")
            for m in METRICS:
                row = [s["runs"][r].get(m) for r in ids]
                if any(v is not None for v in row):
                    base = _value(s["base"][m])
                    lines.append(f"  {m:<12} " + " | ".join(_value(v) for v in row) + f"   (base {base})")
    else:
        lines.append("scores: no golden set that every one of these runs was evaluated on "
                     "(`studio eval run RUN --golden FILE` for each, with the same file)")
    lines.append("data")
    for v in found["data"]["versions"]:
        lines.append(f"  {v['id']}  " + ("(deleted)" if v.get("deleted") else
                                        f"'{v['name']}' {v['kind']}, {v['rows_train']} train / {v['rows_val']} val"))
    for c in found["data"]["changes"]:
        lines.append(f"  {c['from']} → {c['to']}: " + (c.get("error") or
                     f"+{c['added']} added, -{c['removed']} removed, {c['changed']} changed, {c['unchanged']} same"))
    lines.append("what became of them")
    for run_id, out in found["outcomes"].items():
        made = [f"export {e['id']} ({e['kind']}, {e['status']})" for e in out["exports"]]
        made += [f"deployment {d['id']} → {d['slot']} ({d['status']}, {d['verdict']})" for d in out["deployments"]]
        lines.append(f"  {run_id}: " + ("; ".join(made) or "not exported or published"))
    return "\n".join(lines)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
