"""Publishing targets, one module each (see base.py for the interface every target implements)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studio.core.errors import InvalidInput
from studio.publishing.targets.base import Target
from studio.publishing.targets.engine_docker import SglangDockerTarget, VllmDockerTarget
from studio.publishing.targets.hub import HubTarget
from studio.publishing.targets.inference_endpoint import InferenceEndpointTarget
from studio.publishing.targets.local import LocalTarget
from studio.publishing.targets.remote import RemoteTarget
from studio.publishing.targets.tgi_docker import DockerTarget
from studio.publishing.targets.vllm import VllmTarget

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

TARGETS: tuple[type[Target], ...] = (LocalTarget, VllmTarget, DockerTarget, VllmDockerTarget, SglangDockerTarget,
                                     RemoteTarget, HubTarget, InferenceEndpointTarget)


def target_classes() -> dict[str, type[Target]]:
    return {cls.kind: cls for cls in TARGETS}


def make_target(ws: Workspace, kind: str, options: dict[str, Any] | None = None) -> Target:
    classes = target_classes()
    if kind not in classes:
        raise InvalidInput(f"'{kind}' is not a publishing target.", f"Choose one of: {', '.join(classes)}.")
    return classes[kind].from_dict(ws, options)
