"""Where a run is published. One small interface, one plain class per target:

    plan(source)                 -> Plan      what will happen (command, repo, limits), no side effects
    deploy(source, export, cb)   -> Deployed  do it; how to talk to the result (None: the user runs it)

Each target's options are a pydantic model (extra="forbid"); the field descriptions are the help text
of the Publish tab and of `studio publish`. Secrets (api_key, token) are never stored with a deployment.
The remote server target lives in studio/publish/remote.py, the Hub and Inference Endpoint ones in hub.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from studio.core.errors import InvalidInput
from studio.publishing import docker
from studio.publishing.source import RunSource, TokenLimits
from studio.publishing.verify import Served

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.publishing.export import Export

Progress = Callable[[float, str], None]
SECRET_FIELDS = {"api_key", "token"}


@dataclass
class Plan:
    target: str
    slot: str  # publishing again into the same slot replaces; rollback puts the previous version back
    export_kind: str  # merged | adapter
    steps: list[str]
    command: list[str] | None = None
    files: dict[str, str] = field(default_factory=dict)  # name -> content to copy (a compose file)
    limits: TokenLimits | None = None
    url: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "limits"}
        if self.command:
            out["command_text"] = docker.command_text(self.command)
        if self.limits:
            out["limits"] = {"max_input_tokens": self.limits.max_input_tokens,
                             "max_total_tokens": self.limits.max_total_tokens, "basis": self.limits.basis}
        return out


@dataclass
class Deployed:
    url: str
    served: Served | None  # None: nothing answers yet (the user runs the command), so no verification
    details: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)  # extra findings: {"ok", "cause", "text"}
    message: str = ""
    cleanup: Callable[[], None] | None = None  # e.g. stop a temporary endpoint after verification


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def public(self) -> dict[str, Any]:
        """The options as stored with the deployment: secrets left out."""
        data = self.model_dump(exclude=SECRET_FIELDS)
        data.update({f"{k}_set": bool(getattr(self, k)) for k in SECRET_FIELDS if k in type(self).model_fields})
        return data


def _problem(error: dict[str, Any]) -> str:
    """One option's problem in words, naming the option as the form and the CLI flag do (`repo_id`,
    `--repo-id`), without pydantic's own prefixes ("Value error, ...")."""
    field = ".".join(str(p) for p in error["loc"]) or "options"
    named = f"{field} (--{field.replace('_', '-')})" if error["loc"] else field
    if error["type"] == "missing":
        return f"{named} is required"
    if error["type"] == "extra_forbidden":
        return f"{field} is not an option of this target"
    return f"{named}: {error['msg'].removeprefix('Value error, ')}"


def slug(value: str) -> str:
    value = (value or "").strip()
    if not value or not all(c.isalnum() or c in "-_." for c in value) or len(value) > 48:
        raise ValueError("use 1 to 48 letters, digits, '-', '_' or '.'")
    return value


class Target:
    kind: ClassVar[str]
    label: ClassVar[str]
    help: ClassVar[str]
    Options: ClassVar[type[Options]]

    def __init__(self, ws: Workspace, options: Options):
        self.ws = ws
        self.options = options

    @classmethod
    def from_dict(cls, ws: Workspace, options: dict[str, Any] | None) -> Target:
        clean = {k: v for k, v in (options or {}).items() if v is not None and not k.endswith("_set")}
        try:
            return cls(ws, cls.Options.model_validate(clean))
        except ValidationError as exc:
            problems = "; ".join(_problem(e) for e in exc.errors())
            raise InvalidInput(f"The {cls.kind} target's options are not valid: {problems}.",
                               f"See `studio publish --help` for the {cls.kind} options.") from exc

    def export_kind(self) -> str:
        return "merged" if getattr(self.options, "merged", True) else "adapter"

    def slot(self, source: RunSource) -> str:
        raise NotImplementedError

    def plan(self, source: RunSource, export_dir: str | None = None) -> Plan:
        """export_dir: the export's model folder when one exists already (commands then name it)."""
        raise NotImplementedError

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        raise NotImplementedError
