"""The curated base-model catalog (assets/models.yaml): each entry's size, context, license, whether it is
gated, its LoRA targets and the config keys that decide its shape (what the fit check counts with)."""

from __future__ import annotations

import functools
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from studio.core.paths import ASSETS

DEMO_MODEL = "demo-tiny"


class Shape(BaseModel):
    """The numbers of a model's architecture the fit check needs, and the config they came from.

    `config` holds config.json's keys (model_type first of all): studio.models.params builds the model from
    it on the meta device to count its parameters. Without one (a shape typed by hand, as the benchmark's
    tiny one), a Llama config is made from the numbers."""

    model_config = ConfigDict(extra="forbid")
    hidden: int
    layers: int
    intermediate: int  # per token: for a mixture of experts, the routed experts' widths added up
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None  # None: hidden // heads
    config: dict[str, Any] = {}

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        """A shape from config.json's keys (a multimodal config's text_config is the language model)."""
        text = config.get("text_config") or config
        heads = text.get("num_attention_heads", 1)
        experts_per_token = text.get("num_experts_per_tok") or 0
        if experts_per_token and text.get("moe_intermediate_size"):
            intermediate = experts_per_token * text["moe_intermediate_size"]
        else:
            intermediate = text.get("intermediate_size") or 4 * text["hidden_size"]
        return cls(
            hidden=text["hidden_size"],
            layers=text["num_hidden_layers"],
            intermediate=intermediate,
            heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            vocab=text["vocab_size"],
            head_dim=text.get("head_dim"),
            config=dict(config),
        )

    def hf_config(self) -> dict[str, Any]:
        """The config to build this model from: the stored one, else a Llama one with these numbers."""
        if self.config:
            return self.config
        return {
            "model_type": "llama", "hidden_size": self.hidden, "num_hidden_layers": self.layers,
            "intermediate_size": self.intermediate, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "vocab_size": self.vocab,
            **({"head_dim": self.head_dim} if self.head_dim else {}),
        }  # fmt: skip


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    family: str
    params_b: float = Field(description="parameters, in billions, as the model card states them")
    context: int = Field(description="longest context the model was trained for, in tokens")
    license: str
    gated: bool
    notes: str = ""
    lora_targets: list[str]
    config: dict[str, Any] = Field(description="the keys of the model's config.json that decide its size")

    @property
    def shape(self) -> Shape:
        return Shape.from_config(self.config)

    @property
    def size(self) -> str:
        """The stated size as people say it: "8.03B", "135M", and "0.87M" for the demo model (not "0.00087B")."""
        return f"{self.params_b:g}B" if self.params_b >= 1 else f"{self.params_b * 1000:.3g}M"


@functools.cache
def catalog() -> tuple[CatalogEntry, ...]:
    raw = yaml.safe_load((ASSETS / "models.yaml").read_text(encoding="utf-8"))
    return tuple(CatalogEntry.model_validate(item) for item in raw)


def catalog_entry(model_id: str) -> CatalogEntry | None:
    return next((e for e in catalog() if e.id == model_id), None)
