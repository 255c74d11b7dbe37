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
