"""The TrainerCallback that turns the Trainer's logs into events.jsonl lines, and stops on request.

Step events carry step, epoch, loss, learning rate, gradient norm, tokens per second, GPU memory,
elapsed and ETA, and for DPO/ORPO/KTO the reward margin, the chosen/rejected rewards and the accuracy of
preferring the chosen answer; the studio's Runs tab and `studio runs show --follow` read nothing else.
In a run of several processes only rank 0 writes (the Trainer already logs the loss averaged over the
ranks), and a stop asked of any rank stops them all at the same step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from studio.training import distributed
from studio.training.summary import step_line

if TYPE_CHECKING:
    from studio.training.folder import Clock, RunFolder

log = logging.getLogger("studio.training")


# TRL's preference metrics (DPO, ORPO, KTO) → the names of our step events; KTO logs no accuracy
PREFERENCE_METRICS = {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
                      "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
                      "logps/chosen": "logp_chosen", "logps/rejected": "logp_rejected"}


def _preference(logs: dict, prefix: str = "") -> dict[str, float | None]:
    return {ours: _number(logs[prefix + theirs]) for theirs, ours in PREFERENCE_METRICS.items()
            if prefix + theirs in logs}


def _number(value: Any) -> float | None:
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return None


class Progress(TrainerCallback):
    def __init__(self, folder: RunFolder, stop: threading.Event, clock: Clock):
        self.folder = folder
        self.stop = stop
        self.clock = clock
        self.resumed_from: str | None = None
        self._first_step = 0
        self._first_time = time.time()
        self._last_tokens = 0
        self._last_time = time.time()
        self.writes = distributed.is_main()  # rank 0 of a group (or the only process) writes events
        self.listeners: list[Callable[[dict], None]] = []  # told every step/eval event (reporting.MlflowRun)

    def _gpu_memory(self) -> int | None:
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None

    def on_train_begin(self, args, state, control, **kwargs):
        self._first_step = state.global_step
        self._first_time = self._last_time = time.time()
        self._last_tokens = state.num_input_tokens_seen or 0
        if not self.writes:
            return
        self.folder.emit(
            "start", step=state.global_step, max_steps=state.max_steps, epochs=args.num_train_epochs,
            resumed_from=self.resumed_from, elapsed=self.clock.elapsed(),
        )
        self.folder.write_status("running", step=state.global_step, max_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps > 0:
            control.should_log = True  # the last step is logged too: the run's page ends on it, not on step 5 of 7
        if distributed.sync_stop(self.stop.is_set(), args.device):
            self.stop.set()  # a rank that was not signalled itself stops with the others (and says cancelled)
            control.should_training_stop = True
            control.should_save = True  # a checkpoint to resume from, written before the loop ends
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if not self.writes:
            return
        now = time.time()
        if "loss" in logs:
            tokens = state.num_input_tokens_seen or 0
            speed = (tokens - self._last_tokens) / max(now - self._last_time, 1e-6)
            self._last_tokens, self._last_time = tokens, now
            done = state.global_step - self._first_step
            per_step = (now - self._first_time) / done if done > 0 else None
            eta = round(per_step * (state.max_steps - state.global_step), 1) if per_step else None
            self._tell(self.folder.emit(
                "step", step=state.global_step, max_steps=state.max_steps, epoch=_number(state.epoch),
                loss=_number(logs.get("loss")), learning_rate=_number(logs.get("learning_rate")),
                grad_norm=_number(logs.get("grad_norm")), tokens_seen=int(tokens),
                tokens_per_second=round(speed, 1), gpu_memory=self._gpu_memory(),
                elapsed=self.clock.elapsed(), eta=eta, **_preference(logs),
            ))
        if "eval_loss" in logs:
            self._tell(self.folder.emit(
                "eval", step=state.global_step, max_steps=state.max_steps, epoch=_number(state.epoch),
                eval_loss=_number(logs["eval_loss"]), elapsed=self.clock.elapsed(),
                **{f"eval_{k}": v for k, v in _preference(logs, "eval_").items()},
            ))

    def _tell(self, event: dict) -> None:
        log.info(step_line(event))  # train.log reads as the Runs tab does, not as the Trainer's dicts
        for listener in self.listeners:
            listener(event)

    def on_save(self, args, state, control, **kwargs):
        if self.writes:
            self.folder.emit("checkpoint", step=state.global_step, path=f"checkpoints/checkpoint-{state.global_step}")
