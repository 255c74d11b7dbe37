"""Failures become reasons: turn what went wrong inside the training process into one sentence a domain
expert understands, and the change that would help. Written to status.json and the `end` event.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studio.core.files import is_disk_full

if TYPE_CHECKING:
    from studio.training.config import TrainConfig


@dataclass
class Failure:
    kind: str  # oom | gated | model_unavailable | disk_full | empty_data | bad_data | unexpected
    reason: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "reason": self.reason, "fix": self.fix}


class EmptyDataset(Exception):
    """Nothing left to train on after tokenising (every answer cut off or empty)."""


class ModelLoadError(Exception):
    """from_pretrained failed for the base model; the original error is the __cause__."""


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _names(chain: list[BaseException]) -> set[str]:
    return {base.__name__ for e in chain for base in type(e).__mro__}


def classify(exc: BaseException, cfg: TrainConfig | None, run_dir: Path, model_name: str = "") -> Failure:
    chain = _chain(exc)
    names = _names(chain)
    text = " ".join(str(e) for e in chain)
    lowered = text.lower()

    from studio.core.errors import StudioError

    if isinstance(exc, StudioError):  # already a sentence and a fix (a bad template choice, a bad config)
        return Failure("bad_data" if exc.kind == "invalid_input" else exc.kind, exc.message, exc.fix or "")

    if isinstance(exc, EmptyDataset):
        return Failure(
            "empty_data",
            f"No training example was left after tokenising: {exc}",
            f"Raise max_length (now {cfg.max_length if cfg else '?'}) above the length of your examples, or check "
            "in the Data tab that the answer column is filled.",
        )

    if "OutOfMemoryError" in names or "out of memory" in lowered or isinstance(exc, MemoryError) or (
        "can't allocate memory" in lowered or "defaultcpuallocator" in lowered
    ):
        where = "the GPU" if "cuda" in lowered or "OutOfMemoryError" in names else "this computer"
        settings = (
            f"micro_batch_size (now {cfg.micro_batch_size}) or max_length (now {cfg.max_length})" if cfg else
            "micro_batch_size or max_length"
        )
        checkpointing = "" if cfg is None or cfg.gradient_checkpointing else ", turn on gradient_checkpointing"
        return Failure(
            "oom",
            f"Training ran out of memory on {where}: the model and one batch of examples do not fit.",
            f"Lower {settings}{checkpointing}, or use the low-memory preset. The fit check shows what fits.",
        )

    if any(is_disk_full(e) for e in chain):  # no space, a quota, or a file-size limit
        free = _free_gb(run_dir)
        return Failure(
            "disk_full",
            f"The disk holding the workspace is full ({free} free), so checkpoints or the adapter could not be "
            "saved.",
            "Free some space (delete old runs with `studio runs rm ID` or in the Runs tab), then resume this run: "
            "checkpoints saved before the disk filled up are kept.",
        )

    model_error = isinstance(exc, ModelLoadError) or names & {
        "GatedRepoError", "RepositoryNotFoundError", "LocalEntryNotFoundError", "RevisionNotFoundError",
    }  # fmt: skip
    if model_error:
        if "GatedRepoError" in names or "gated" in lowered:
            return Failure(
                "gated",
                f"'{model_name}' is a gated model and this machine has no access to it (no Hugging Face token, or "
                "the token's account has not accepted the license).",
                "Accept the license on the model's hub page, set HF_TOKEN to a token of that account before "
                "starting the studio, and resume this run.",
            )
        if "RepositoryNotFoundError" in names or "not a valid model identifier" in lowered or "404" in text:
            return Failure(
                "model_unavailable",
                f"There is no model called '{model_name}' on the Hugging Face hub.",
                "Check the spelling (org/model), or pick a model from the list, and start a new run.",
            )
        if names & {"LocalEntryNotFoundError"} or any(w in lowered for w in ("connect", "offline", "resolve")):
            return Failure(
                "model_unavailable",
                f"'{model_name}' is not downloaded on this machine and the Hugging Face hub cannot be reached.",
                "Connect to the internet once so it downloads, copy the model folder here and use its path, or "
                "pick demo-tiny.",
            )
        first = str(chain[-1]).splitlines()[0] if str(chain[-1]) else type(chain[-1]).__name__
        return Failure(
            "model_unavailable",
            f"The base model '{model_name}' could not be opened: {first}",
            "Check that the model name or folder is right and complete, then start a new run.",
        )

    first = str(exc).splitlines()[0] if str(exc) else ""
    return Failure(
        "unexpected",
        f"Training stopped with an unexpected error: {type(exc).__name__}{': ' + first if first else ''}",
        "The last lines of train.log (shown with the run) tell more. Resume the run once the cause is fixed.",
    )


def _free_gb(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 1024**3:.1f} GB"
    except OSError:
        return "no space"
