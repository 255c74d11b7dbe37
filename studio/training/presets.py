"""Presets: named, commented partial TrainConfigs in presets/*.yaml, merged under the user's own changes.

A preset file holds `about:` and `cost:` (plain words for the Train tab) and any TrainConfig settings
except base_model and dataset_id. Both the preset and the user's overrides are validated by TrainConfig,
so a typo in either is refused with a message that names it.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from studio.core.errors import InvalidInput, NotFound
from studio.core.paths import PRESETS_DIR
from studio.training.config import PRESET_FIELDS, TrainConfig, validate

DEFAULT_PRESET = "balanced"
DESCRIPTIVE_KEYS = ("about", "cost")
_PLACEHOLDER = {"base_model": "<base model>", "dataset_id": "<dataset>"}


class Preset(BaseModel):
    name: str
    about: str
    cost: str
    overrides: dict[str, Any]
    path: str

    def values(self) -> dict[str, Any]:
        """Every setting this preset leads to (TrainConfig defaults under its overrides)."""
        config = TrainConfig.model_validate({**_PLACEHOLDER, **self.overrides})
        return {k: v for k, v in config.model_dump(mode="json").items() if k in PRESET_FIELDS}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def parse_preset(name: str, text: str, path: str = "") -> Preset:
    where = f"preset '{name}'"
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where} is not valid YAML: {exc}", "Fix the file's indentation or quoting.") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} does not hold settings.", "Write one 'setting: value' per line.")
    missing = [k for k in DESCRIPTIVE_KEYS if not str(raw.get(k) or "").strip()]
    if missing:
        raise InvalidInput(
            f"{where} has no {' or '.join(missing)} text.",
            "Say in plain words what the preset is for (about:) and roughly what it costs (cost:).",
        )
    overrides = {k: v for k, v in raw.items() if k not in DESCRIPTIVE_KEYS}
    per_run = [k for k in _PLACEHOLDER if k in overrides]
    if per_run:
        raise InvalidInput(
            f"{where} sets {', '.join(per_run)}, which is chosen for each run, not by a preset.",
            "Remove that line from the preset.",
        )
    validate({**_PLACEHOLDER, **overrides}, where)
    return Preset(name=name, about=str(raw["about"]).strip(), cost=str(raw["cost"]).strip(),
                  overrides=overrides, path=path)


def load_preset(name: str) -> Preset:
    path = PRESETS_DIR / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        raise NotFound(f"There is no preset called '{name}'.", f"Pick one of: {', '.join(preset_names())}.")
    return parse_preset(name, path.read_text(encoding="utf-8"), str(path))


def list_presets() -> list[Preset]:
    return [load_preset(name) for name in preset_names()]


def build_config(
    base_model: str,
    dataset_id: str,
    preset: str = DEFAULT_PRESET,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """TrainConfig defaults, then the preset, then the user's overrides; validated as one."""
    for value, what, flag in ((base_model, "base model", "--model"), (dataset_id, "dataset version", "--data")):
        if not (value or "").strip():
            raise InvalidInput(f"No {what} was chosen.", f"Pick one ({flag} on the command line).")
    chosen = load_preset(preset)
    overrides = dict(overrides or {})
    per_run = [k for k in _PLACEHOLDER if k in overrides]
    if per_run:
        raise InvalidInput(
            f"{', '.join(per_run)} cannot be changed with an override.",
            "Choose the base model and dataset with their own fields (--model, --data).",
        )
    return validate(
        {**chosen.overrides, **overrides, "base_model": base_model, "dataset_id": dataset_id},
        "your settings" if overrides else f"preset '{preset}'",
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["lora_r=8", "learning_rate=1e-4"]` → {"lora_r": 8, "learning_rate": 0.0001}; keys checked."""
    from studio.training.config import parse_value

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"'{pair}' is not a setting=value pair.", "Write it like --set lora_r=8.")
        out[key] = parse_value(key, value.strip())
    return out
