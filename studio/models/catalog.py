"""The curated base-model catalog (assets/models.yaml): each entry's size, context, license, whether it is
gated, its LoRA targets and its shape (what the fit check counts with)."""

from __future__ import annotations

import functools

import yaml
from pydantic import BaseModel, ConfigDict, Field

from studio.core.paths import ASSETS

DEMO_MODEL = "demo-tiny"


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    family: str
    params_b: float = Field(description="parameters, in billions")
    context: int = Field(description="longest context the model was trained for, in tokens")
    license: str
    gated: bool
    notes: str = ""
    lora_targets: list[str]
    shape: Shape


@functools.cache
def catalog() -> tuple[CatalogEntry, ...]:
    raw = yaml.safe_load((ASSETS / "models.yaml").read_text(encoding="utf-8"))
    return tuple(CatalogEntry.model_validate(item) for item in raw)


def catalog_entry(model_id: str) -> CatalogEntry | None:
    return next((e for e in catalog() if e.id == model_id), None)
