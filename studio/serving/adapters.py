"""LoRA adapters an endpoint serves: a run id, a run folder or an adapter folder resolved to the folder
to load, and the names they are served under (what `model=` / `adapter_id=` pick)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from studio.core.errors import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = {"base", "tgi", "__base__"}  # these always mean the base model on our endpoint


def run_adapter_dir(ws: Workspace, run_id: str) -> Path:
    """The adapter folder of a run that finished (or was cancelled after saving its adapter)."""
    with ws.db() as db:
        rows = list(db["runs"].rows_where("id = ?", [run_id]))
    if not rows:
        raise NotFound(f"There is no run '{run_id}'.", "See `studio runs list` for the runs of this workspace.")
    run = rows[0]
    adapter = Path(run["path"]) / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise Conflict(
            f"Run '{run_id}' has no saved adapter yet (status: {run['status']}).",
            "Wait until it has finished, or pick a run that succeeded.",
        )
    return adapter


def resolve_adapter(ws: Workspace, ref: str) -> Path:
    """A run id, a run folder or an adapter folder -> the adapter folder to load."""
    ref = ref.strip()
    if ref.startswith("run-") and not Path(ref).exists():
        return run_adapter_dir(ws, ref)
    path = Path(ref).expanduser()
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").exists():
            return candidate.resolve()
    raise InvalidInput(
        f"'{ref}' is neither a run id nor a folder with a LoRA adapter (adapter_config.json).",
        "Give a run id from `studio runs list`, a run folder, or the adapter folder itself.",
    )


def parse_adapter_specs(specs: list[str]) -> dict[str, str]:
    """["NAME=RUN_OR_FOLDER", ...] -> {NAME: RUN_OR_FOLDER}."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise InvalidInput(f"'{spec}' is not NAME=RUN.", "Write the adapter as NAME=RUN_ID (or NAME=FOLDER).")
        if name.strip() in adapters:
            raise InvalidInput(f"Two adapters are named '{name.strip()}'.", "Give each adapter its own name.")
        adapters[name.strip()] = ref.strip()
    return adapters


def check_adapter_name(name: str, base_model: str = "") -> str:
    if not ADAPTER_NAME.match(name or "") or name.lower() in RESERVED_NAMES or name == base_model:
        raise InvalidInput(
            f"'{name}' cannot name an adapter.",
            "Use letters, digits, '.', '_' or '-' (up to 64), and not 'base', 'tgi' or the base model's name.",
        )
    return name
