"""What is being published: a finished run's adapter and the facts around it (base model, data
version, LoRA rank, training length), and the serving token limits derived from the data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from studio.core.errors import Conflict, NotFound, StudioError

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

ADAPTER_FILES = ("adapter_config.json",)


@dataclass(frozen=True)
class RunSource:
    run_id: str
    name: str
    base_model: str
    dataset_id: str
    preset: str
    run_dir: Path
    adapter_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    lora_r: int = 0
    max_length: int = 0
    served_name: str = ""  # the name clients ask for: see served_name() below

    @property
    def adapter_name(self) -> str:
        """The name the run is served under (the chat `model` field, TGI's adapter_id): the run's name."""
        return self.served_name or self.run_id


def served_name(ws: Workspace, run_id: str, name: str, base_model: str = "") -> str:
    """The run's name made safe for a URL, a CLI and a LoRA module name ('Support v2' -> 'Support-v2').
    Unique in the workspace and stable: when older runs have the same name (or it would clash with a
    reserved name or the base model's), the run id's last part is added ('Support-v2-3fa1')."""
    from studio.serving.adapters import RESERVED_NAMES

    safe = _safe(name)
    if not safe:
        return run_id
    with ws.db() as db:
        row = db.execute("SELECT created_at FROM runs WHERE id = ?", [run_id]).fetchone()
        created = row[0] if row else None
        older = [r[0] for r in db.execute("SELECT id, name, created_at FROM runs WHERE id != ?", [run_id]).fetchall()
                 if _safe(r[1]) == safe and (created is None or (r[2] or "", r[0]) < (created or "", run_id))]
    if older or safe.lower() in RESERVED_NAMES or safe == base_model:
        return f"{safe}-{run_id.rsplit('-', 1)[-1]}"
    return safe


def _safe(name: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip("-.")[:48]


def finished_run(ws: Workspace, run_id: str) -> RunSource:
    """The run to publish; refused unless it finished and its adapter is on disk."""
    run_id = (run_id or "").strip()
    with ws.db() as db:
        rows = list(db["runs"].rows_where("id = ?", [run_id]))
    if not rows:
        raise NotFound(f"There is no run '{run_id}'.", "See `studio runs list` for the runs of this workspace.")
    row = rows[0]
    if row["status"] != "succeeded":
        raise Conflict(
            f"Run '{run_id}' is {row['status']}, not finished: only a run that succeeded can be published.",
            "Wait for it to finish (`studio runs show RUN --follow`), or pick a run whose status is succeeded.",
        )
    run_dir = Path(row["path"])
    adapter_dir = run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").exists():
        raise NotFound(
            f"Run '{run_id}' succeeded but its adapter folder {adapter_dir} is missing or incomplete.",
            "Restore the run folder from a backup, or train the run again.",
        )
    config = _run_config(row, run_dir)
    adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = row.get("base_model") or config.get("base_model") or adapter_cfg.get("base_model_name_or_path")
    return RunSource(
        run_id=run_id,
        name=row.get("name") or run_id,
        base_model=base,
        dataset_id=row.get("dataset_id") or config.get("dataset_id") or "",
        preset=row.get("preset") or config.get("preset") or "",
        run_dir=run_dir,
        adapter_dir=adapter_dir,
        config=config,
        lora_r=int(adapter_cfg.get("r") or config.get("lora_r") or 0),
        max_length=int(config.get("max_length") or 0),
        served_name=served_name(ws, run_id, row.get("name") or run_id, base),
    )


def _run_config(row: dict, run_dir: Path) -> dict:
    if row.get("config_json"):
        try:
            return json.loads(row["config_json"])
        except json.JSONDecodeError:
            pass
    path = run_dir / "config.yaml"
    if path.exists():
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {}


def run_metrics(source: RunSource) -> dict[str, float]:
    """The last training and evaluation losses the run reported (events.jsonl), for the model card."""
    metrics: dict[str, float] = {}
    path = source.run_dir / "events.jsonl"
    if not path.exists():
        return metrics
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key in ("loss", "eval_loss", "train_loss", "step", "epoch"):
            value = event.get(key)
            if isinstance(value, int | float):
                metrics[key] = value
    return metrics


# -- serving token limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLimits:
    max_input_tokens: int
    max_total_tokens: int
    basis: str  # one sentence: where the numbers come from

    @property
    def max_new_tokens(self) -> int:
        return self.max_total_tokens - self.max_input_tokens


def _round_up(value: float, step: int) -> int:
    return int(-(-int(value) // step) * step)


def _stat_max(value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("max")
    return int(value) if isinstance(value, int | float) and value > 0 else None


def report_lengths(report: dict) -> tuple[int | None, int | None, int | None]:
    """The longest prompt, answer and whole conversation, in tokens, from a dataset version's report
    (its token statistics: {"tokens": {"max": ...}, "prompt_tokens": {...}, "answer_tokens": {...}});
    None where the report does not say."""
    return (_stat_max(report.get("prompt_tokens")), _stat_max(report.get("answer_tokens")),
            _stat_max(report.get("tokens")))


def derive_limits(longest_prompt: int | None, longest_answer: int | None, longest_row: int | None,
                  max_length: int, context: int | None) -> TokenLimits:
    """TGI's --max-input-tokens / --max-total-tokens from the data the model was trained on.

    Prompts may run half again as long as the longest one seen, answers twice the longest answer
    (replies like the training answers, with slack). When the report only knows whole conversations,
    both are bounded by the longest one; with no statistics at all, by the training length. Rounded up
    to multiples of 64, never above the model's context.
    """
    if longest_answer and (longest_prompt or longest_row):
        prompt = longest_prompt or longest_row  # a whole conversation bounds its prompt
        inp = max(64, _round_up(prompt * 1.5, 64))
        new = max(64, _round_up(longest_answer * 2, 64))
        basis = (f"the data's longest {'prompt' if longest_prompt else 'conversation'} ({prompt} tokens) ×1.5 "
                 f"and longest answer ({longest_answer} tokens) ×2")
    elif longest_row:
        inp = max(64, _round_up(longest_row * 1.5, 64))
        new = max(64, _round_up(longest_row, 64))
        basis = (f"the data's longest conversation ({longest_row} tokens): prompts up to ×1.5 of it, answers up "
                 "to its length")
    else:
        total = max_length or 2048
        new = max(64, _round_up(total // 4, 64))
        inp = max(64, total - new)
        basis = f"the training length ({total} tokens; the data report has no token statistics), a quarter for answers"
    total = inp + new
    if context and total > context:
        new = min(new, max(1, context // 4))
        total, inp = context, context - new
        basis += f"; capped at the model's context of {context} tokens"
    return TokenLimits(max_input_tokens=inp, max_total_tokens=total, basis=basis)


def token_limits(ws: Workspace, source: RunSource) -> TokenLimits:
    """The serving limits for this run, from its data version's token report and its training length."""
    from studio.data.store import get_version
    from studio.models.catalog import catalog_entry

    lengths: tuple[int | None, ...] = (None, None, None)
    if source.dataset_id:
        try:
            lengths = report_lengths(get_version(ws, source.dataset_id).report)
        except NotFound:
            pass
    entry = catalog_entry(source.base_model)
    context = entry.context if entry else _local_context(ws, source)
    return derive_limits(*lengths, max_length=source.max_length, context=context)


def _local_context(ws: Workspace, source: RunSource) -> int | None:
    from studio.models.resolve import resolve

    try:
        resolved = resolve(ws, source.base_model)
    except StudioError:
        return None
    path = Path(resolved.source) / "config.json"
    if resolved.local and path.exists():
        return json.loads(path.read_text()).get("max_position_embeddings")
    return None


def publishable_runs(ws: Workspace) -> list[tuple[str, str]]:
    """(label, run id) of every run that succeeded, newest first: what the Publish tab offers."""
    from studio.training.runs import list_runs

    return [(run.label, run.id) for run in list_runs(ws, "succeeded")]
