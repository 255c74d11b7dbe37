"""Typed errors of the core. The UI turns them into gr.Error, the CLI into one line and exit code 2."""

from __future__ import annotations


class StudioError(Exception):
    """A problem the user can act on: what went wrong, and what to do about it."""

    kind = "error"

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} {self.fix}" if self.fix else self.message

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "fix": self.fix}


class InvalidInput(StudioError):
    """Bad file, bad column mapping, bad config value: the user's input needs a change."""

    kind = "invalid_input"


class NotFound(StudioError):
    kind = "not_found"


class Conflict(StudioError):
    """The action clashes with the current state (a dataset in use, a run not finished...)."""

    kind = "conflict"


class ResourceError(StudioError):
    """Not enough GPU memory, disk or time for what was asked."""

    kind = "resource"


class ModelUnavailable(StudioError):
    """A base model that cannot be found, reached or opened (gated, offline, typo)."""

    kind = "model_unavailable"
