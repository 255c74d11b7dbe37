"""Parameters counted from each model's own config on the meta device: every catalog entry against the size
its model card states, tied embeddings, head_dim, grouped-query attention and a mixture of experts, and the
numbers `studio models list --json` shows."""

import json
import subprocess
import sys

import pytest

from studio.models.catalog import Shape, catalog, catalog_entry
from studio.models.params import count_params
from studio.training.fitcheck import estimate
from studio.training.presets import build_config


def test_every_catalog_entry_counts_within_5_percent_of_its_stated_size():
    off = {}
    for entry in catalog():
        counted = count_params(entry.config).total
        if abs(counted / (entry.params_b * 1e9) - 1) > 0.05:
            off[entry.id] = f"{counted:,} counted, {entry.params_b}B stated"
    assert not off, f"catalog configs that do not give the stated size: {off}"


def test_tied_embeddings_head_dim_and_gqa_are_counted_as_built():
    llama1b = count_params(catalog_entry("meta-llama/Llama-3.2-1B-Instruct").config)
    assert llama1b.tied and llama1b.total == 1_235_814_400  # not 1.50B: the head is the embedding
    assert count_params(catalog_entry("Qwen/Qwen2.5-0.5B-Instruct").config).total == 494_032_768  # biases too
    assert not count_params(catalog_entry("meta-llama/Llama-3.1-8B-Instruct").config).tied
    # Gemma-3-1B: head_dim 256 with 4 query heads (1,024 wide, not hidden 1,152); 1 key/value head
    gemma = count_params(catalog_entry("google/gemma-3-1b-it").config)
    assert gemma.lora_io["q_proj"] == 26 * (1152 + 4 * 256) and gemma.lora_io["k_proj"] == 26 * (1152 + 256)
    assert gemma.total == pytest.approx(1.0e9, rel=0.001)
    # LoRA r=16 on all projections of Llama-3.2-1B: the 11,272,192 that peft prints
    assert 16 * llama1b.adapter_per_rank(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"]) == 11_272_192


def test_a_mixture_of_experts_counts_every_expert_and_uses_the_routed_ones_per_token():
    h, i, layers, experts, vocab = 64, 96, 2, 8, 256
    config = {"model_type": "mixtral", "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab, "num_local_experts": experts,
              "num_experts_per_tok": 2, "tie_word_embeddings": False}
    counted = count_params(config)
    attention = h * h * 2 + 2 * h * (h // 2)  # q, o and the grouped k, v
    per_expert = 3 * h * i
    per_layer = attention + experts * per_expert + h * experts + 2 * h  # + router + two norms
    assert counted.total == layers * per_layer + 2 * vocab * h + h
    assert counted.active == counted.total - layers * (experts - 2) * per_expert
    shape = Shape.from_config(config)
    assert shape.intermediate == i  # Mixtral names its expert width intermediate_size


def test_the_fit_check_counts_from_the_config():
    cfg = build_config("meta-llama/Llama-3.2-1B-Instruct", "ds", "balanced")
    est = estimate(catalog_entry("meta-llama/Llama-3.2-1B-Instruct").shape, cfg.model_copy(update={"method": "lora"}),
                   {"rows": 100}, {"index": 0, "name": "NVIDIA H100", "memory_free_gb": 80})
    assert est.params == 1_235_814_400 and est.weights_bytes == 2 * 1_235_814_400
    # a shape typed by hand (no config) is counted as a Llama of those numbers
    typed = Shape(hidden=128, layers=4, intermediate=344, heads=4, kv_heads=2, vocab=1085)
    assert count_params(typed.hf_config()).total == 865_024 + 1085 * 128  # untied: a head of its own


def test_an_architecture_transformers_cannot_build_is_refused_plainly():
    from studio.core.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="cannot be counted"):
        count_params({"model_type": "no-such-architecture", "hidden_size": 8})


def test_models_list_json_shows_counted_and_stated_sizes(tmp_path):
    out = subprocess.run([sys.executable, "-m", "studio", "--home", str(tmp_path / "h"), "models", "list", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    entries = {e["id"]: e for e in json.loads(out.stdout)}
    qwen = entries["Qwen/Qwen2.5-0.5B-Instruct"]
    assert qwen["params"] == 494_032_768 and qwen["params_b"] == 0.49
    assert all(isinstance(e["params"], int) and e["params"] > 0 for e in entries.values())
