"""Where a run came from and what became of it: dataset version → the runs it continues → the run → the
runs continued from it → its exports → their deployments, with ids (and URLs) at every step. Read only:
from the registry and the run folders' manifests, for the Runs tab and `studio runs lineage`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.training.runs import Run


def lineage(ws: Workspace, run_id: str) -> dict[str, Any]:
    """The run's chain as data: {"dataset", "ancestors", "run", "continued_by", "exports", "deployments"}.
    An ancestor or dataset version deleted since is kept by id with "deleted": True."""
    from studio.training import lineage as chain
    from studio.training.runs import get_run, list_runs

    run = get_run(ws, run_id)
    every = {r.id: r for r in list_runs(ws)}
    manifest = run.folder.read_manifest()
    ancestors = [_brief(every[a]) if a in every else {"id": a, "deleted": True} for a in chain.ancestry(manifest)]
    first = next((every[a] for a in chain.ancestry(manifest) if a in every), run)
    return {
        "dataset": _dataset(ws, first.dataset_id),
        "ancestors": ancestors,
        "run": _brief(run) | {"dataset": _dataset(ws, run.dataset_id)},
        "continued_by": _descendants(run.id, every),
        **outcomes(ws, run.id),
    }


def outcomes(ws: Workspace, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """What became of a run: its exports (newest first) and every deployment made from it."""
    from studio.publishing.deployments import list_deployments
    from studio.publishing.export import list_exports

    exports = [{"id": e.id, "kind": e.kind, "status": e.status, "version": e.version if e.export_hash else None,
                "bytes": e.bytes, "created_at": e.created_at, "error": e.error} for e in list_exports(ws, run_id)]
    deployments = [{"id": d.id, "target": d.target, "slot": d.slot, "status": d.status, "url": d.url,
                    "export_id": d.export_id, "model_version": d.model_version, "verdict": d.verdict,
                    "created_at": d.created_at, "previous_id": d.previous_id}
                   for d in list_deployments(ws, run_id=run_id)]
    return {"exports": exports, "deployments": deployments}


def _brief(run: Run) -> dict[str, Any]:
    return {"id": run.id, "name": run.name, "status": run.status, "objective": run.config.get("objective", "sft"),
            "dataset_id": run.dataset_id, "base_model": run.base_model, "created_at": run.created_at}


def _dataset(ws: Workspace, dataset_id: str) -> dict[str, Any]:
    from studio.core.errors import NotFound
    from studio.data.store import get_version

    try:
        v = get_version(ws, dataset_id)
    except NotFound:
        return {"id": dataset_id, "deleted": True}
    return {"id": v.id, "name": v.name, "rows_train": v.rows_train, "rows_val": v.rows_val,
            "source": v.source_name, "created_at": v.created_at}


def _descendants(run_id: str, every: dict[str, Run]) -> list[dict[str, Any]]:
    """The runs continued from `run_id`, each with the runs continued from it (a tree, oldest first)."""
    children = [r for r in every.values() if (r.folder.read_manifest().get("parent") or {}).get("run_id") == run_id]
    return [_brief(c) | {"continued_by": _descendants(c.id, every)}
            for c in sorted(children, key=lambda r: r.created_at)]


def lineage_markdown(found: dict[str, Any], *, plain: bool = False) -> str:
    """The chain as an indented list, one step per line, this run in bold, deployment URLs as links;
    plain=True: the same without Markdown (for a terminal)."""
    lines = [f"- dataset {_dataset_words(found['dataset'])}"]
    depth = 1
    for ancestor in found["ancestors"]:
        lines.append("  " * depth + f"- → {_run_words(ancestor)}")
        depth += 1
    run = found["run"]
    here = "  " * depth
    if found["ancestors"] and run["dataset"]["id"] != found["dataset"]["id"]:
        lines.append(here + f"- + dataset {_dataset_words(run['dataset'])}")
    lines.append(here + f"- → **{_run_words(run)}** ← this run")
    for export in found["exports"]:
        lines.append(here + f"  - → export `{export['id']}` ({export['kind']}, {export['status']}"
                     + (f", {export['version']}" if export.get("version") else "") + ")")
        lines += [here + f"    - → {_deployment_words(d)}" for d in found["deployments"]
                  if d["export_id"] == export["id"]]
    shown = {e["id"] for e in found["exports"]}
    lines += [here + f"  - → {_deployment_words(d)}" for d in found["deployments"] if d["export_id"] not in shown]
    lines += _tree_lines(found["continued_by"], depth + 1)
    if not found["exports"] and not found["deployments"]:
        lines.append(here + "  - not exported or published yet (Publish tab, or `studio publish RUN`)")
    text = "\n".join(lines)
    return re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text).replace("**", "").replace("`", "") if plain else text


def _tree_lines(children: list[dict[str, Any]], depth: int) -> list[str]:
    out = []
    for child in children:
        out.append("  " * depth + f"- → continued by {_run_words(child)}")
        out += _tree_lines(child["continued_by"], depth + 1)
    return out


def _dataset_words(d: dict[str, Any]) -> str:
    if d.get("deleted"):
        return f"`{d['id']}` (deleted)"
    return f"`{d['id']}` '{d['name']}' ({d['rows_train']} training / {d['rows_val']} held-out rows)"


def _run_words(r: dict[str, Any]) -> str:
    if r.get("deleted"):
        return f"run `{r['id']}` (deleted)"
    return f"run `{r['id']}` '{r['name']}' ({r['objective'].upper()}, {r['status']})"


def _deployment_words(d: dict[str, Any]) -> str:
    where = f"[{d['url']}]({d['url']})" if (d.get("url") or "").startswith(("http://", "https://")) else d.get("url")
    return (f"deployment `{d['id']}` to {d['slot']} ({d['status']}, verification {d['verdict']})"
            + (f" at {where}" if where else ""))
