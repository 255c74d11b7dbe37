"""TrainConfig: the one typed, validated description of a fine-tune.

A run freezes one of these into its folder as config.yaml; presets are partial overrides of it;
the field descriptions are the help text the Train tab shows beside each control.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studio.core.errors import InvalidInput

Method = Literal["qlora", "lora"]
Objective = Literal["sft", "dpo", "orpo", "kto"]
PREFERENCE_OBJECTIVES = ("dpo", "orpo", "kto")
Schedule = Literal["cosine", "linear", "constant", "constant_with_warmup"]


class TrainConfig(BaseModel):
    """Everything that decides what a run does. Unknown keys are refused, numbers are bounded."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # what to train, on what
    base_model: str = Field(
        min_length=1,
        description="The model to start from: a name from the list, a hub id like 'org/model', or a local folder.",
    )
    dataset_id: str = Field(
        min_length=1, description="The saved dataset version to learn from (made in the Data tab)."
    )

    # how the base model is held in memory
    method: Method = Field(
        "qlora",
        description="qlora keeps the base model in 4 bits (NF4, double quantization, bf16 compute) so big models fit "
        "a small GPU; lora keeps it in 16 bits (faster, needs about 3x the memory). Without a CUDA GPU both "
        "train in 32-bit on the CPU.",
    )

    # what the run learns from
    objective: Objective = Field(
        "sft",
        description="sft learns example answers (question -> answer rows). dpo learns from pairs of a better and a "
        "worse answer; it needs a model that already answers in the domain, so start it from an SFT run (--from). "
        "orpo learns the better answer and the preference in one go, from the base model. kto learns from single "
        "answers marked good or bad (thumbs up/down).",
    )
    beta: float = Field(
        0.1, gt=0.0, le=10.0,
        description="dpo/kto: how far the model may drift from where it started (lower lets it move further; "
        "0.1 is usual). orpo: the weight of the preference next to learning the better answer.",
    )

    # the adapter
    lora_r: int = Field(
        16, ge=1, le=256,
        description="Adapter size (rank). Bigger learns more detail but uses more memory; 8-64 is usual.",
    )
    lora_alpha: int = Field(
        32, ge=1, le=1024,
        description="How strongly the adapter changes the model; usually twice the adapter size.",
    )
    lora_dropout: float = Field(
        0.05, ge=0.0, le=0.5,
        description="Share of adapter inputs randomly dropped while training, against learning the examples by heart.",
    )
    target_modules: list[str] = Field(
        default_factory=list,
        description="Which layers get an adapter. Empty = the model's attention and MLP projections (recommended).",
    )

    # optimisation
    learning_rate: float = Field(
        2e-4, gt=0.0, le=0.05,
        description="How big each learning step is. Too high and the loss jumps around; too low and nothing is learnt.",
    )
    lr_schedule: Schedule = Field(
        "cosine", description="How the step size changes over the run: cosine and linear slow down towards the end."
    )
    warmup_ratio: float = Field(
        0.03, ge=0.0, le=0.5, description="Share of the run spent ramping the step size up from zero, for stability."
    )
    epochs: float = Field(
        3.0, gt=0.0, le=100.0, description="How many times the model reads the whole dataset."
    )
    max_steps: int = Field(
        0, ge=0, le=1_000_000,
        description="Stop after this many learning steps instead of counting epochs (0 = use epochs).",
    )
    micro_batch_size: int = Field(
        4, ge=1, le=256,
        description="Examples processed at once on the GPU. Lower it if the GPU runs out of memory.",
    )
    gradient_accumulation: int = Field(
        4, ge=1, le=1024,
        description="Micro-batches added up before each learning step; micro-batch x this = the real batch size.",
    )
    max_length: int = Field(
        1024, ge=32, le=131_072,
        description="Longest example in tokens; longer ones are cut. Memory grows with it.",
    )
    packing: bool = Field(
        False,
        description="Put several short examples into one sequence. Faster on datasets of short rows; the examples "
        "still cannot see each other.",
    )
    answers_only_loss: bool = Field(
        True,
        description="Learn only from the answers, not from repeating the questions (recommended).",
    )
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute instead of storing intermediate results: about 30% slower, much less memory.",
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="Pulls adapter weights towards zero (0 = off).")
    max_grad_norm: float = Field(
        1.0, gt=0.0, le=100.0, description="Caps the size of each update, so one odd batch cannot derail training."
    )

    # where it runs
    processes: int = Field(
        1, ge=1, le=64,
        description="Training processes on this machine, one per GPU: each trains on micro_batch_size examples, so "
        "the real batch is processes x micro-batch x accumulation. Several GPUs share the run with DDP (each holds "
        "the whole model) or, when the model does not fit one GPU, FSDP (the model sharded over them).",
    )

    # bookkeeping
    eval_every: int = Field(
        0, ge=0, le=1_000_000,
        description="Measure the loss on the held-out rows every this many steps (0 = at the end of each epoch).",
    )
    save_every: int = Field(
        0, ge=0, le=1_000_000,
        description="Save a checkpoint (to resume from) every this many steps (0 = at the end of each epoch).",
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=100, description="How many checkpoints to keep on disk; older ones are deleted."
    )
    log_every: int = Field(1, ge=1, le=10_000, description="Record loss and speed every this many steps.")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Makes a run repeatable: same seed, same data order.")

    @field_validator("base_model", "dataset_id")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("target_modules", mode="before")
    @classmethod
    def _modules_as_text(cls, value: Any) -> Any:
        """`q_proj,v_proj` or `q_proj v_proj`, as people type them in a form or after --set, is a list."""
        return value.replace(",", " ").split() if isinstance(value, str) else value

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        cleaned = [m.strip() for m in value if m.strip()]
        bad = [m for m in cleaned if not m.replace("_", "").replace(".", "").isalnum()]
        if bad:
            raise ValueError(f"not a layer name: {', '.join(bad)}")
        return cleaned

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation  # per process

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# Fields a preset may set: everything except what the user picks for each run (and the machine decides).
PRESET_FIELDS = tuple(name for name in TrainConfig.model_fields if name not in ("base_model", "dataset_id",
                                                                                "processes"))


# what people type, from other trainers' flags, for the studio's setting names
ALIASES = {"lr": "learning_rate", "rank": "lora_r", "r": "lora_r", "alpha": "lora_alpha", "steps": "max_steps",
           "num_train_epochs": "epochs", "batch_size": "micro_batch_size", "per_device_train_batch_size":
           "micro_batch_size", "gradient_accumulation_steps": "gradient_accumulation", "max_seq_length": "max_length"}


def field_help(name: str) -> str:
    return TrainConfig.model_fields[name].description or ""


def parse_value(name: str, text: str) -> Any:
    """Turn `--set key=value` text into a value of the field's kind (YAML rules: 2e-4, true, [a, b])."""
    if name not in TrainConfig.model_fields:
        near = difflib.get_close_matches(name, [*PRESET_FIELDS, *ALIASES], n=1, cutoff=0.6)
        meant = ALIASES.get(near[0], near[0]) if near else ALIASES.get(name)
        raise InvalidInput(
            f"'{name}' is not a training setting." + (f" Did you mean '{meant}'?" if meant else ""),
            f"Known settings: {', '.join(PRESET_FIELDS)}.",
        )
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def explain(exc: ValidationError, where: str = "") -> InvalidInput:
    """One readable message for every problem pydantic found, each naming its setting."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            problems.append(f"'{key}' is not a training setting")
        elif err["type"] == "missing":
            problems.append(f"'{key}' is required")
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
            problems.append(f"'{key}' {err['msg'].lower()}{shown}")
    prefix = f"{where}: " if where else ""
    unknown = any(err["type"] == "extra_forbidden" for err in exc.errors())
    fix = (
        f"Check the spelling; known settings are: {', '.join(PRESET_FIELDS)}."
        if unknown
        else "Change the value(s) named above; each setting's help text gives its range."
    )
    return InvalidInput(prefix + "; ".join(problems) + ".", fix)


def validate(data: dict[str, Any], where: str = "") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, where) from exc


def load_yaml(text: str, where: str = "config.yaml") -> TrainConfig:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise InvalidInput(
            f"{where} does not hold settings (key: value lines).", "Write one 'setting: value' per line."
        )
    return validate(data, where)
