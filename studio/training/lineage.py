"""Continuing a run: a new run starts from an earlier run's adapter (SFT, then DPO from it).

The parent's adapter is copied into the new run folder (start-adapter/), so the run folder alone says
what it started from and a deleted parent cannot break it; the manifest's `parent` names the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.core.errors import Conflict, InvalidInput

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.training.config import TrainConfig
    from studio.training.runs import Run

START_ADAPTER = "start-adapter"


def parent_for(ws: Workspace, run_id: str, cfg: TrainConfig) -> Run:
    """The run to continue, checked: finished with an adapter, on the same base model."""
    from studio.training.runs import get_run

    parent = get_run(ws, run_id)
    if not parent.folder.has_adapter():
        raise Conflict(f"Run '{run_id}' has no adapter to continue from (status: {parent.status}).",
                       "Pick a run that succeeded (or was cancelled after some steps).")
    if parent.base_model != cfg.base_model:
        raise InvalidInput(
            f"Run '{run_id}' trained an adapter for '{parent.base_model}', not for '{cfg.base_model}'.",
            f"Use the same base model as the run you continue (--model {parent.base_model}).",
        )
    return parent


def copy_start(parent: Run, run_dir: Path) -> dict[str, Any]:
    """Copy the parent's adapter into the new run folder; return the manifest's `parent` entry."""
    shutil.copytree(parent.folder.adapter, run_dir / START_ADAPTER)
    manifest = parent.folder.read_manifest()
    return {"run_id": parent.id, "name": parent.name, "objective": parent.config.get("objective", "sft"),
            "dataset_id": parent.dataset_id, "adapter": START_ADAPTER,
            "lineage": [*ancestry(manifest), parent.id]}


def ancestry(manifest: dict[str, Any]) -> list[str]:
    """The runs a run descends from, oldest first (empty for a run that started from the base model)."""
    parent = manifest.get("parent") or {}
    return list(parent.get("lineage") or [])


def lineage_text(manifest: dict[str, Any], ws: Workspace | None = None) -> str:
    """'continues run-b (sft, 'name'): run-a → run-b', for the Runs tab and `studio runs show`; with `ws`, a run
    of the chain that has been deleted is marked so (deleting a parent is allowed: this run keeps its own copy
    of the adapter it started from, start-adapter/)."""
    parent = manifest.get("parent")
    if not parent:
        return "starts from the base model"
    gone = deleted_runs(ws, ancestry(manifest)) if ws is not None else set()
    chain = " → ".join(f"{r} (deleted)" if r in gone else r for r in ancestry(manifest))
    text = f"continues {parent['run_id']} ({parent.get('objective', 'sft')}, '{parent.get('name', '')}'): {chain}"
    if parent["run_id"] in gone:
        text += f"; that run was deleted, its adapter is kept in this run's {START_ADAPTER}/"
    return text


def deleted_runs(ws: Workspace, run_ids: list[str]) -> set[str]:
    if not run_ids:
        return set()
    with ws.db() as db:
        found = {r[0] for r in db.execute(f"SELECT id FROM runs WHERE id IN ({', '.join('?' for _ in run_ids)})",
                                          run_ids).fetchall()}
    return set(run_ids) - found


def children_of(ws: Workspace, run_id: str) -> list[str]:
    """The runs continued from `run_id` (their manifests name it as parent)."""
    from studio.training.runs import list_runs

    return [r.id for r in list_runs(ws) if (r.folder.read_manifest().get("parent") or {}).get("run_id") == run_id]
