"""Turning what the user picked (a catalog name, a hub id or a local folder) into something
`from_pretrained` can open, the shape of a model outside the catalog (from its config.json), and
load failures explained.

`demo-tiny` is built into the workspace on first use (see studio/models/demo.py) and then
loaded through exactly the same AutoTokenizer / AutoModelForCausalLM path as a hub model.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from studio.core.errors import InvalidInput, ModelUnavailable, StudioError
from studio.models.catalog import DEMO_MODEL, CatalogEntry, Shape, catalog_entry

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ResolvedModel(BaseModel):
    """What the user asked for, and where `from_pretrained` should look."""

    name: str  # as the user gave it: "demo-tiny", "Qwen/Qwen2.5-0.5B-Instruct", "/models/mine"
    source: str  # a local folder path or a hub id
    local: bool
    entry: CatalogEntry | None = None


def resolve(ws: Workspace, name: str) -> ResolvedModel:
    """Map a catalog name, hub id or local folder to a loadable source; build demo-tiny if needed."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("No base model was chosen.", "Pick one from the list, or type a hub id.")
    if name == DEMO_MODEL:
        from studio.models.demo import ensure_demo_model

        return ResolvedModel(
            name=name, source=str(ensure_demo_model(ws)), local=True, entry=catalog_entry(name)
        )
    path = Path(name).expanduser()
    if path.is_dir():
        _check_model_root(ws, path)
        if not (path / "config.json").exists():
            raise ModelUnavailable(
                f"The folder {path} has no config.json, so it is not a saved model.",
                "Point at the folder that save_pretrained wrote (it holds config.json).",
            )
        return ResolvedModel(name=name, source=str(path.resolve()), local=True)
    if name.startswith(("/", "./", "~")) or not _HUB_ID.match(name):
        raise ModelUnavailable(
            f"'{name}' is neither an existing folder nor a hub id like 'org/model'.",
            "Check the spelling, or pick a model from the list (`studio models list` on the command line).",
        )
    return ResolvedModel(name=name, source=name, local=False, entry=catalog_entry(name))


def download_note(ws: Workspace, name: str) -> str | None:
    """For a hub id not in this machine's Hugging Face cache: what starting a run on it needs (the run
    downloads it first). None for a local folder, demo-tiny or a model already downloaded. No network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        resolved = resolve(ws, name)
    except StudioError:
        return None
    if resolved.local or isinstance(try_to_load_from_cache(resolved.source, "config.json"), str):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return (f"'{name}' is not downloaded on this machine and HF_HUB_OFFLINE is set, so a run on it fails. "
                "Download it where the hub is reachable and copy the model folder here (type its path).")
    return (f"'{name}' is not downloaded on this machine yet: the run downloads it first, so this machine must "
            "reach huggingface.co (or set HF_HOME to a cache that holds it).")


def model_roots(ws: Workspace) -> list[Path]:
    """Where non-admins may load a model folder from: the workspace's models, runs and exports, and the
    folders in STUDIO_MODEL_ROOTS (separated by the OS path separator)."""
    extra = [Path(p).expanduser() for p in os.environ.get("STUDIO_MODEL_ROOTS", "").split(os.pathsep) if p.strip()]
    return [ws.models_dir, ws.runs_dir, ws.exports_dir, *extra]


def _check_model_root(ws: Workspace, path: Path) -> None:
    from studio.core import access

    actor = access.current()
    if actor.may("model.any_folder"):
        return
    real = path.resolve()
    if not any(real.is_relative_to(root.resolve()) for root in model_roots(ws)):
        raise access.Forbidden(
            f"{actor.name} ({actor.role}) may load a model folder only from the studio's model folders, and {path} "
            "is not in one.",
            f"Copy the model into {ws.models_dir}, or ask an admin to add its folder to STUDIO_MODEL_ROOTS.",
        )


def model_shape(ws: Workspace, name: str) -> Shape | None:
    """The architecture the fit check counts: the catalog's config, else a local folder's config.json."""
    entry = catalog_entry(name)
    if entry is not None and name != DEMO_MODEL:
        return entry.shape
    resolved = resolve(ws, name)
    if not resolved.local:
        return None
    return Shape.from_config(json.loads((Path(resolved.source) / "config.json").read_text()))


def load_tokenizer(ws: Workspace, name: str):
    """The base model's tokenizer, with its chat template. Hub ids need a network (or the cache)."""
    from studio.core.imports import heavy_imports

    with heavy_imports():
        from transformers import AutoTokenizer

    resolved = resolve(ws, name)
    try:
        return AutoTokenizer.from_pretrained(resolved.source)
    except OSError as exc:
        raise explain_load_error(name, exc) from exc


def explain_load_error(name: str, exc: BaseException) -> ModelUnavailable:
    """Turn a from_pretrained failure into a sentence about the cause and the fix."""
    text = str(exc)
    lowered = text.lower()
    if "gated" in lowered or "401" in text or "403" in text or "restricted" in lowered:
        return ModelUnavailable(
            f"'{name}' is a gated model and this machine has no access to it.",
            "Accept its license on the model's hub page, then set HF_TOKEN to a token of that account.",
        )
    if "404" in text or "not a valid model identifier" in lowered or "does not exist" in lowered:
        return ModelUnavailable(
            f"There is no model called '{name}' on the hub.",
            "Check the spelling (org/model), or pick a model from the list (`studio models list`).",
        )
    if "offline" in lowered or "connect" in lowered or "resolve" in lowered or "network" in lowered:
        return ModelUnavailable(
            f"'{name}' is not downloaded yet and the model hub cannot be reached from this machine.",
            "Connect to the internet once to download it, copy the model folder here and type its path, "
            "or use demo-tiny.",
        )
    return ModelUnavailable(f"'{name}' could not be opened: {text.splitlines()[0] if text else exc!r}")
