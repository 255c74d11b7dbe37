"""The launcher seam: how the queue hands a claimed run to whatever runs it.

The queue (studio/training/scheduler.py) decides *which* run starts and *where* (a device slot); a
launcher decides *how*: today a local process (local.py); multi-GPU (accelerate/torchrun) and cluster
runners (Ray) are further launchers, each one new module in this package plus one line in __init__.py.
The queue, the run folder contract (studio/training/folder.py) and the UI stay as they are.

The contract, for every launcher:

- `start(attempt)` starts one attempt of a run whose folder already holds config.yaml and manifest.json,
  and returns a Handle (a local pid and its start time, and/or `ref`, an id in an outside system such as a
  Ray job id). It returns once the run is handed over, not when it ends. The process it starts runs
  `python -m studio.training RUN_DIR` (or the same entry point on another machine).
- `poll(attempt)` answers whether the attempt still runs. The scheduler calls it on every pass, for every
  running run, also in a studio that has just restarted: that call is the re-adoption, so it must work
  from the Handle alone (no state kept in the launcher object). A launcher whose run is elsewhere brings
  the run folder up to date here (new events, status, checkpoints, the adapter).
- `cancel(attempt)` asks the attempt to stop gracefully: the training process stops at the next step,
  saves a checkpoint and the adapter, and writes status.json "cancelled". It does not wait.
- `kill(attempt, grace)` stops it now (the scheduler calls it when a cancelled attempt has not stopped
  `grace` seconds after cancel: a hung process must not hold a GPU forever).
- `ending(attempt)` says how an attempt that no longer runs ended (exit code, signal, killed by `kill`).
- `failure(attempt)` (optional) gives the reason of a failed attempt when the launcher knows it better than
  the run folder does: "rank 1 of 2 died" for a group whose rank 0 only saw its peer vanish.

What a launcher may write: the run's folder only (train.log, exit.json; a remote launcher the files it
copies back). Never the registry: the queue records the Handle and every status change itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from studio.core.procs import Ending
from studio.training.folder import RunFolder

CPU_SLOT = -1  # the slot of the CPU, when the machine has no CUDA GPU
CLUSTER_SLOT = -2  # runs of a remote launcher (Ray): they hold no device here, the cluster queues them


@dataclass(frozen=True)
class Handle:
    """What the queue records of a started attempt, so any later studio can find it again."""

    pid: int | None = None  # a local process (group leader) the studio can signal
    started: float | None = None  # that process's start time: a reused pid is not ours
    ref: str | None = None  # an id in an outside system (a cluster job), when the run is not local


@dataclass(frozen=True)
class Attempt:
    """One start of a run, as the launcher sees it."""

    run_id: str
    folder: RunFolder
    slot: int  # a CUDA device index, or CPU_SLOT
    number: int  # 1 for the first start, 2 after the first resume, ...
    handle: Handle = Handle()
    devices: tuple[int, ...] = ()  # every GPU a run of several processes holds (slot is the first); () = slot


class Launcher(ABC):
    name: str
    remote = False  # True: the run trains elsewhere (a cluster) and takes CLUSTER_SLOT, not a device here

    def prepare(self, ws: Any, options: dict[str, Any]) -> dict[str, Any]:
        """At submit, before the run is queued: refuse what cannot start (a Ray cluster that does not answer)
        and return what the run's manifest records under "launch" (e.g. the cluster's address)."""
        return {}

    @abstractmethod
    def start(self, attempt: Attempt) -> Handle: ...

    @abstractmethod
    def poll(self, attempt: Attempt) -> bool: ...

    @abstractmethod
    def cancel(self, attempt: Attempt) -> bool: ...

    @abstractmethod
    def kill(self, attempt: Attempt, grace: float) -> None: ...

    @abstractmethod
    def ending(self, attempt: Attempt) -> Ending: ...

    def failure(self, attempt: Attempt) -> str | None:
        """Why an attempt that no longer runs failed, when the launcher knows better than the training
        process did (a rank of a group died and took the others down). None: let the run folder say."""
        return None
