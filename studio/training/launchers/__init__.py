"""Launchers: how a claimed run is started (see base.py for the contract). One module per launcher."""

from __future__ import annotations

from studio.core.errors import InvalidInput
from studio.training.launchers.accelerate import AccelerateLauncher
from studio.training.launchers.base import Launcher
from studio.training.launchers.local import LocalLauncher
from studio.training.launchers.ray import RayLauncher

DEFAULT = "local"
LAUNCHERS: dict[str, Launcher] = {
    launcher.name: launcher for launcher in (LocalLauncher(), AccelerateLauncher(), RayLauncher())
}


def get(name: str | None) -> Launcher:
    """The launcher called `name` (a run registered before launchers existed ran locally)."""
    name = name or DEFAULT
    if name not in LAUNCHERS:
        raise InvalidInput(f"'{name}' is not a way to run training here.", f"Choose one of: {', '.join(LAUNCHERS)}.")
    return LAUNCHERS[name]
