"""The accelerate launcher: a run of N processes on one machine, `accelerate launch --num_processes N -m
studio.training RUN_DIR`, as one supervised process group (studio/core/procs.py).

accelerate's multi-GPU path is torchrun's agent in-process: it starts the N ranks as its children (each in a
session of its own, writing to the same train.log), gives each RANK/LOCAL_RANK/WORLD_SIZE, passes a SIGTERM on
to them, and when one rank dies it stops the others (SIGTERM, then SIGKILL after the shutdown timeout) and
prints the ranks that failed. The strategy
comes from the fit check, recorded in the manifest at submit (studio/training/strategy.py): DDP (every GPU
holds the whole model) or FSDP (the model, 4-bit weights stored in the compute dtype, sharded over the
GPUs). On a machine without CUDA the ranks train on the CPU and talk over gloo (TrainingArguments.use_cpu).
The launch settings are written to the run folder as accelerate.yaml, so no accelerate config of the user's
changes a run, and the run can be started again by hand with the same file.
"""

from __future__ import annotations

import re
import shutil
import signal
import sys

import yaml

from studio.core import procs
from studio.core.files import read_json
from studio.training.launchers.base import CPU_SLOT, Attempt
from studio.training.launchers.local import LocalLauncher

# How long the agent waits for the other ranks to save and stop after a cancel or a dead rank before it
# kills them: the scheduler's own grace for a cancelled run (scheduler.CANCEL_GRACE_S).
SHUTDOWN_TIMEOUT_S = 180
# FSDP for QLoRA, after the bitsandbytes/peft FSDP-QLoRA guides: one FSDP unit per decoder layer; the
# model is loaded on rank 0 and broadcast (ram-efficient loading), the original parameters are not kept
# (the 4-bit weights are flat bf16 storage), checkpoints are saved sharded and the adapter gathered whole.
FSDP_CONFIG = {
    "fsdp_version": 1,
    "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "fsdp_sharding_strategy": "FULL_SHARD",
    "fsdp_backward_prefetch": "BACKWARD_PRE",
    "fsdp_forward_prefetch": False,
    "fsdp_offload_params": False,
    "fsdp_cpu_ram_efficient_loading": True,
    "fsdp_sync_module_states": True,
    "fsdp_use_orig_params": False,
    "fsdp_state_dict_type": "SHARDED_STATE_DICT",
}
# torchrun's ChildFailedError lists each failed rank: "rank      : 1 (local_rank: 1)" then "exitcode  : -9 (pid: …)"
_FAILED_RANK = re.compile(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


def launch_config(processes: int, strategy: str) -> dict:
    """accelerate's config file for this run (the keys of `accelerate config`)."""
    config = {
        "compute_environment": "LOCAL_MACHINE",
        # MULTI_GPU is accelerate's name for "start N ranks with torchrun"; without CUDA they use the CPU
        "distributed_type": "FSDP" if strategy == "fsdp" else "MULTI_GPU",
        "num_processes": processes,
        "num_machines": 1,
        "machine_rank": 0,
        "main_process_port": 0,  # a free port each time: several multi-process runs can run side by side
        "gpu_ids": "all",  # CUDA_VISIBLE_DEVICES, set by the queue, already names this run's GPUs
        "mixed_precision": "no",  # the Trainer sets bf16/fp16 itself (recipe.trainer_options)
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "debug": False,
    }
    if strategy == "fsdp":
        config["fsdp_config"] = dict(FSDP_CONFIG)
    return config


class AccelerateLauncher(LocalLauncher):
    name = "accelerate"

    def _distributed(self, attempt: Attempt) -> tuple[int, str]:
        info = attempt.folder.read_manifest().get("distributed") or {}
        return max(int(info.get("processes") or 1), 1), info.get("strategy") or "ddp"

    def argv(self, attempt: Attempt) -> list[str]:
        processes, _strategy = self._distributed(attempt)
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(self.config_file(attempt)),
                "--num_processes", str(processes), "-m", "studio.training", str(attempt.folder.path)]

    def config_file(self, attempt: Attempt):
        return attempt.folder.path / "accelerate.yaml"

    def environment(self, attempt: Attempt) -> dict[str, str]:
        env = super().environment(attempt)
        if attempt.slot != CPU_SLOT:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in (attempt.devices or (attempt.slot,)))
        env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(SHUTDOWN_TIMEOUT_S)
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS") or "1"  # N ranks share the cores
        return env

    def start(self, attempt: Attempt):
        shutil.rmtree(attempt.folder.path / "ranks", ignore_errors=True)  # the last attempt's ranks are not these
        processes, strategy = self._distributed(attempt)
        self.config_file(attempt).write_text(yaml.safe_dump(launch_config(processes, strategy), sort_keys=False),
                                            encoding="utf-8")
        return super().start(attempt)

    # torchrun starts each rank in a session of its own: the group the supervisor signals holds the shepherd and
    # accelerate's agent only. The agent passes a SIGTERM on to the ranks; each rank is also watched and signalled
    # directly through the pid it recorded (distributed.register), so none outlives a dead agent or a kill.

    def ranks(self, attempt: Attempt) -> list[procs.Proc]:
        found = []
        for path in sorted((attempt.folder.path / "ranks").glob("*.json")):
            record = read_json(path)
            if record.get("pid"):
                found.append(procs.Proc(pid=int(record["pid"]), started=record.get("started"), log=attempt.folder.log,
                                        exit_file=attempt.folder.exit))
        return found

    def poll(self, attempt: Attempt) -> bool:
        return super().poll(attempt) or any(procs.alive(rank) for rank in self.ranks(attempt))

    def cancel(self, attempt: Attempt) -> bool:
        asked = super().cancel(attempt)
        return any([procs.signal_group(rank, signal.SIGTERM) for rank in self.ranks(attempt)]) or asked

    def kill(self, attempt: Attempt, grace: float) -> None:
        super().kill(attempt, grace)
        for rank in self.ranks(attempt):
            if procs.alive(rank):
                procs.kill(rank, grace=grace)

    def failure(self, attempt: Attempt) -> str | None:
        """'Rank K of N died' when the agent reported a failed rank (read from this attempt's log).

        The agent lists every rank it found failed; one killed by a signal (kill -9, the out-of-memory killer,
        a crash) is the cause, the ones that then exited with an error only saw it vanish. A rank 0 that
        raised is not named here: its status.json already says why (a bad batch, out of memory, ...)."""
        log = attempt.folder.log
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        marker = f"=== attempt {attempt.number} started"
        text = text[text.rfind(marker):] if marker in text else text
        if "ChildFailedError" not in text:
            return None
        failed = [(int(rank), int(code)) for rank, code in _FAILED_RANK.findall(text[text.rfind("ChildFailedError"):])]
        if not failed:
            return None
        killed = sorted(f for f in failed if f[1] < 0)
        rank, code = killed[0] if killed else min(failed)
        if rank == 0 and code >= 0:
            return None
        processes, strategy = self._distributed(attempt)
        return (f"Rank {rank} of {processes} died ({_describe_exit(code)}), so the other processes of this "
                f"{strategy.upper()} run were stopped too."
                + ("" if code < 0 else " Its error is in the log (Runs tab, or `studio runs show RUN --log 60`)."))


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"it exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return f"killed by {name}: by a person, or by the system's out-of-memory killer"
    return f"killed by {name}"
