"""Submitting a run: the fit check for a config on this machine (plan), freezing the config into a new run
folder and queueing it (submit), re-running a run's exact config, and the `studio train` line for a form.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from studio.core import access, audit
from studio.core.db import now
from studio.core.errors import InvalidInput, ResourceError
from studio.core.files import disk_full_says, new_folder, write_json_atomic
from studio.training import launchers, lineage
from studio.training.config import TrainConfig, load_yaml
from studio.training.folder import RunFolder
from studio.training.runs import Run, get_run

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.models.params import ParamCount
    from studio.training.fitcheck import FitEstimate


class Plan(BaseModel):
    """What the Train tab shows before Start: the frozen config, and the fit check for it."""

    config: TrainConfig
    estimate: dict[str, Any] | None = None  # FitEstimate as a dict (None: model shape unknown)
    summary: str
    device: str
    download: str | None = None  # a hub model not downloaded yet: what the run needs first (in summary too)


# ------------------------------------------------------------------------------------------ planning


def plan(ws: Workspace, cfg: TrainConfig, *, from_run: str | None = None) -> Plan:
    """The fit check for `cfg` on this machine: the first GPU (or the CPU), this dataset's lengths. Refuses what
    submit would refuse about the data, the processes, the run to continue (`from_run`) and target_modules."""
    import psutil

    from studio.core.errors import ModelUnavailable
    from studio.core.system import gpus
    from studio.data.store import get_version
    from studio.models.params import cache_dir as params_cache
    from studio.models.params import count_params
    from studio.models.resolve import download_note, model_shape
    from studio.training import fitcheck
    from studio.training.strategy import check_processes, spread

    check_objective(get_version(ws, cfg.dataset_id), cfg)  # a missing or unsuitable dataset is refused first
    if from_run:
        lineage.parent_for(ws, from_run, cfg)
    shape = model_shape(ws, cfg.base_model)
    found = gpus()
    check_processes(cfg.processes, found)
    gpu = found[0] if found else None
    device = f"GPU 0 ({gpu['name']})" if gpu else "the CPU"
    download = download_note(ws, cfg.base_model)  # said with every outcome below: the run needs it first
    tail = f"\n\n{download}" if download else ""
    if shape is None:
        return Plan(config=cfg, summary=f"No fit check: the size of '{cfg.base_model}' is unknown until it is "
                    f"downloaded (it is not in the catalog).{tail}", device=device, download=download)
    try:
        stats = fitcheck.dataset_stats(ws, cfg.dataset_id, cfg.base_model)
    except ModelUnavailable:  # a local folder that is not a model: the run itself will say so
        stats = {}
    try:
        counted = count_params(shape.hf_config(), cache=params_cache(ws))  # no torch once counted in this workspace
        tail = _check_targets(cfg, counted) + tail
        estimate = fitcheck.estimate(shape, cfg, stats, gpu, available_bytes=psutil.virtual_memory().available)
        estimate = spread(estimate, cfg, shape, gpu, psutil.virtual_memory().available)
    except ModelUnavailable as exc:  # an architecture transformers cannot build: it cannot train it either
        return Plan(config=cfg, summary=f"No fit check: {exc}{tail}", device=device, download=download)
    return Plan(config=cfg, estimate=estimate.model_dump(), summary=estimate.summary() + tail, device=device,
                download=download)


def _check_targets(cfg: TrainConfig, counted: ParamCount) -> str:
    """Refuse target_modules that name no layer of this model (peft would fail the run when it starts); a
    sentence for the fit check when only some of them are unknown (peft leaves those out)."""
    unknown = counted.unknown_targets(cfg.target_modules)
    if not unknown:
        return ""
    layers = ", ".join(sorted(counted.lora_io))
    if len(unknown) == len(cfg.target_modules):
        raise InvalidInput(f"target_modules: '{cfg.base_model}' has no layer called {', '.join(unknown)}.",
                           f"Name some of its linear layers ({layers}), or leave target_modules empty for all of "
                           "them.")
    return (f"\n\ntarget_modules: '{cfg.base_model}' has no layer called {', '.join(unknown)}; the adapter goes on "
            f"the others only. Its linear layers: {layers}.")


# ------------------------------------------------------------------------------------------ submitting


def submit(
    ws: Workspace,
    cfg: TrainConfig,
    *,
    preset: str = "",
    overrides: dict[str, Any] | None = None,
    name: str | None = None,
    force: bool = False,
    estimate: FitEstimate | dict | None = None,
    launcher: str | None = None,
    from_run: str | None = None,
    launch_options: dict[str, Any] | None = None,
) -> Run:
    """Freeze `cfg` into a new run folder, register the run and queue it for `launcher` to start.

    Refused (ResourceError, with the change that fits) when the fit check says it cannot fit the
    device's whole memory, unless force=True. `from_run`: start from that run's adapter (trainable) instead
    of a fresh one; its adapter is copied into the new run folder (start-adapter/) and named in the manifest.
    `launcher` None: Ray when a cluster address is set (System tab, STUDIO_RAY_ADDRESS), else this machine;
    `launch_options` go to the launcher's prepare ({"ray_address": ...} for Ray).
    """
    from studio.core.system import gpus
    from studio.data.store import get_version
    from studio.models.resolve import resolve
    from studio.training.strategy import check_processes, manifest_entry

    actor = access.require(ws, "train.start")
    if launcher is None:  # the default: a Ray cluster set in the System tab or STUDIO_RAY_ADDRESS takes the runs
        from studio.training.cluster import configured

        launcher = "ray" if configured(ws)[0] else launchers.DEFAULT
    if cfg.processes > 1 and launcher == launchers.DEFAULT:
        launcher = "accelerate"  # several processes on this machine: one group under `accelerate launch`
    launcher = launchers.get(launcher).name
    if launcher in (launchers.DEFAULT, "accelerate"):
        check_processes(cfg.processes, gpus())
    version = get_version(ws, cfg.dataset_id)
    check_objective(version, cfg)
    parent = lineage.parent_for(ws, from_run, cfg) if from_run else None
    resolved = resolve(ws, cfg.base_model)
    if estimate is None:
        estimate = plan(ws, cfg).estimate
    elif not isinstance(estimate, dict):
        estimate = estimate.model_dump()
    if estimate and not force:
        _refuse_if_too_big(estimate)
    # e.g. Ray: the cluster must answer before anything is queued (launch_options: {"ray_address": ...})
    launch = launchers.get(launcher).prepare(ws, launch_options or {})
    with disk_full_says("creating the run folder", ws.runs_dir):
        folder = RunFolder(new_folder(ws.runs_dir, "run"))
    run_id = folder.path.name
    manifest = {
        "run_id": run_id,
        "created_at": now(),
        "preset": preset,
        "overrides": overrides or {},
        "base_model": {"name": cfg.base_model, "source": resolved.source, "local": resolved.local},
        "dataset": {
            "id": version.id, "name": version.name, "content_hash": version.content_hash,
            "template": version.template or "model", "system_prompt": version.system_prompt,
            "path": version.path, "rows_train": version.rows_train, "rows_val": version.rows_val,
        },
        "fit_check": estimate,
        "distributed": manifest_entry(cfg.processes, estimate),
    }
    if launch:
        manifest["launch"] = launch
    from studio.training import tracking

    tracked = tracking.manifest_entry(ws)  # MLflow's URI, frozen: the process may run on another machine
    if tracked:
        manifest["tracking"] = tracked
    try:  # a folder that is not complete is removed: the queue never sees half a run
        with disk_full_says("writing the run's config and manifest", ws.runs_dir):
            folder.config.write_text(cfg.to_yaml(), encoding="utf-8")
            if parent is not None:
                manifest["parent"] = lineage.copy_start(parent, folder.path)
            write_json_atomic(folder.manifest, manifest)
    except BaseException:
        shutil.rmtree(folder.path, ignore_errors=True)
        raise
    stamp = now()
    row = {
        "id": run_id, "name": (name or "").strip() or f"{cfg.base_model.split('/')[-1]} on {version.name}",
        "dataset_id": version.id, "base_model": cfg.base_model, "preset": preset,
        "config_json": cfg.model_dump_json(), "status": "queued", "created_at": stamp, "queued_at": stamp,
        "path": str(folder.path), "attempts": 0, "step": 0, "launcher": launcher, "created_by": actor.name,
        "max_steps": (estimate or {}).get("steps") or None,
    }
    try:
        with ws.db() as db:
            db["runs"].insert(row)
    except BaseException:
        shutil.rmtree(folder.path, ignore_errors=True)
        raise
    audit.record(ws, "train.start", run_id, dataset=version.id, base_model=cfg.base_model, preset=preset,
                 from_run=from_run, forced=force)
    return get_run(ws, run_id)


def _refuse_if_too_big(estimate: dict) -> None:
    from studio.core.system import gpus
    from studio.training.fitcheck import SAFETY_MARGIN, gb

    peak = estimate["peak_bytes"]
    if estimate["precision"] == "32bit":
        import psutil

        limit, where = psutil.virtual_memory().total, "this computer's memory"
    else:
        found = gpus()
        if not found:
            return
        limit, where = int(found[0]["memory_total_gb"] * 1024**3), f"the GPU ({found[0]['name']})"
    if peak > limit * SAFETY_MARGIN:
        raise ResourceError(
            f"This run needs about {gb(peak)} but {where} has {gb(limit)} in all, so it would run out of memory.",
            estimate.get("suggestion") or "Use the low-memory preset or a smaller model.",
        )


def check_objective(version: Any, cfg: TrainConfig) -> None:
    """Refuse an objective that cannot learn from the version's kind of data (DPO on question/answer rows)."""
    from studio.core.errors import InvalidInput
    from studio.data.kinds import mismatch, mismatch_fix

    problem = mismatch(cfg.objective, version.kind)
    if problem:
        raise InvalidInput(f"Dataset '{version.name}' ({version.id}): {problem}", mismatch_fix(cfg.objective))


def rerun(ws: Workspace, run_id: str) -> Run:
    """A new run with exactly the same frozen config (the dataset version and preset too)."""
    run = get_run(ws, run_id)
    cfg = load_yaml(run.folder.config.read_text(encoding="utf-8"))
    manifest = run.folder.read_manifest()
    return submit(ws, cfg, preset=run.preset, overrides=manifest.get("overrides"),
                  name=f"{run.name} (re-run)", estimate=manifest.get("fit_check"), force=True,
                  launcher=run.launcher or launchers.DEFAULT, from_run=(manifest.get("parent") or {}).get("run_id"),
                  launch_options={"ray_address": (manifest.get("launch") or {}).get("address")})


def command_line(base_model: str, dataset_id: str, preset: str, overrides: dict[str, Any] | None = None,
                 name: str | None = None, from_run: str | None = None, home: Path | None = None) -> str:
    """The `studio train` line that starts the same run as the Train tab's form; with `home` (the workspace)
    when it is not the default one, so that the line works in a new terminal without STUDIO_HOME."""
    import shlex

    from studio.core.workspace import DEFAULT_HOME

    parts = ["studio", "train"]
    if home is not None and Path(home).expanduser().resolve() != DEFAULT_HOME.expanduser().resolve():
        parts += ["--home", str(home)]
    parts += ["--data", dataset_id, "--model", base_model, "--preset", preset]
    overrides = dict(overrides or {})
    if overrides.get("objective") not in (None, "sft"):
        parts += ["--method", overrides.pop("objective")]
    if from_run:
        parts += ["--from", from_run]
    if overrides.get("processes") not in (None, 1):
        parts += ["--processes", str(overrides.pop("processes"))]
    overrides.pop("processes", None)
    for key, value in overrides.items():
        text = json.dumps(value) if isinstance(value, list | bool) else str(value)
        parts += ["--set", f"{key}={text}"]
    if name:
        parts += ["--name", name]
    return " ".join(shlex.quote(p) for p in parts)
