"""What a run folder says, in numbers and in words: curves and the latest progress from events.jsonl
(for the Runs tab, `studio runs show` and the registry), and a step event as one line of text."""

from __future__ import annotations

from typing import Any

from studio.training.folder import RunFolder


def summarize(folder: RunFolder) -> dict[str, Any]:
    """Curves and the latest numbers from events.jsonl, for the Runs tab, `runs show` and the registry."""
    events = folder.read_events()
    steps = [e for e in events if e["type"] == "step"]
    evals = [e for e in events if e["type"] == "eval"]
    starts = [e for e in events if e["type"] == "start"]
    last = steps[-1] if steps else {}
    max_steps = next((e.get("max_steps") for e in reversed(starts + steps) if e.get("max_steps")), None)
    step = max([e.get("step") or 0 for e in events if e["type"] in ("step", "checkpoint", "end")], default=0)
    progress = {
        "step": step,
        "max_steps": max_steps,
        "loss": last.get("loss"),
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
    }
    return {
        "progress": {k: v for k, v in progress.items() if v is not None},
        "last": last,
        "steps": steps,
        "evals": evals,
        "notices": [e["message"] for e in events if e["type"] == "notice"],
        "checkpoints": [e for e in events if e["type"] == "checkpoint"],
        "end": next((e for e in reversed(events) if e["type"] == "end"), None),
        "attempts": len(starts),
    }


def seconds_text(value: float | None) -> str:
    if value is None:
        return "?"
    value = int(value)
    if value < 90:
        return f"{value}s"
    if value < 5400:
        return f"{value // 60}m{value % 60:02d}s"
    return f"{value // 3600}h{value % 3600 // 60:02d}m"


def step_line(event: dict[str, Any]) -> str:
    """One step event as a line: `step 12/60 · epoch 2.00 · loss 6.2100 · lr 3.0e-03 · ...`."""
    parts = [f"step {event.get('step')}/{event.get('max_steps')}"]
    if event.get("epoch") is not None:
        parts.append(f"epoch {event['epoch']:.2f}")
    if event["type"] == "eval":
        parts.append(f"eval loss {event['eval_loss']:.4f}")
        return " · ".join(parts)
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.4f}")
    if event.get("reward_margin") is not None:
        parts.append(f"reward margin {event['reward_margin']:+.3f}")
    if event.get("reward_accuracy") is not None:
        parts.append(f"prefers chosen {event['reward_accuracy']:.0%}")
    if event.get("learning_rate") is not None:
        parts.append(f"lr {event['learning_rate']:.1e}")
    if event.get("grad_norm") is not None:
        parts.append(f"grad norm {event['grad_norm']:.2f}")
    if event.get("tokens_per_second"):
        parts.append(f"{event['tokens_per_second']:.0f} tok/s")
    if event.get("gpu_memory"):
        parts.append(f"GPU {event['gpu_memory'] / 1024**3:.1f} GB")
    parts.append(f"elapsed {seconds_text(event.get('elapsed'))}")
    if event.get("eta") is not None:
        parts.append(f"eta {seconds_text(event['eta'])}")
    return " · ".join(parts)


LEARNT_SHARE = 0.9  # held-out loss at most this share of its first value: the run learnt something general
MEMORISED_SHARE = 0.5  # training loss under this share of its start while held-out loss did not improve
ROSE_SHARE = 1.1  # held-out loss this much above its best: the later steps memorised


def learning_verdict(curves: dict[str, Any]) -> str | None:
    """What the two loss curves say, in words, once there are at least two held-out evaluations: learnt
    something that carries over, memorised the training rows (held-out flat while training falls), or began to
    memorise after a point (held-out rose from its best). None when there is too little to say."""
    evals = [e for e in curves.get("evals", []) if e.get("eval_loss") is not None]
    losses = [e["loss"] for e in curves.get("steps", []) if e.get("loss") is not None]
    if len(evals) < 2 or len(losses) < 2:
        return None
    first_eval, last_eval = evals[0]["eval_loss"], evals[-1]["eval_loss"]
    best = min(evals, key=lambda e: e["eval_loss"])
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    first_train, last_train = sum(head) / len(head), sum(tail) / len(tail)
    train_fell = last_train < MEMORISED_SHARE * first_train
    if last_eval > ROSE_SHARE * best["eval_loss"] and train_fell:
        return (f"⚠️ Held-out loss rose from its best, {best['eval_loss']:.3g} at step {best['step']}, to "
                f"{last_eval:.3g} while training loss kept falling (to {last_train:.3g}): the later steps memorised "
                f"the training rows. Fewer steps (about {best['step']}) or more varied rows help.")
    if best["eval_loss"] > LEARNT_SHARE * first_eval:
        if train_fell:
            return (f"⚠️ Held-out loss did not improve ({first_eval:.3g} → {last_eval:.3g}) while training loss fell "
                    f"from {first_train:.3g} to {last_train:.3g}: the model memorised its training rows rather than "
                    "learning what carries over to new questions. Try it on new questions in Chat; more and more "
                    "varied rows, fewer steps or a lower learning rate help.")
        return (f"Held-out loss did not improve ({first_eval:.3g} → {last_eval:.3g}) and training loss barely "
                f"moved ({first_train:.3g} → {last_train:.3g}): the run has not learnt much yet. More steps or a "
                "higher learning rate help.")
    return (f"✅ Held-out loss fell from {first_eval:.3g} to {last_eval:.3g} along with training loss "
            f"({first_train:.3g} → {last_train:.3g}): what the run learnt carries over to rows it never trained on.")
