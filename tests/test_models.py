import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from studio.core.errors import InvalidInput, ModelUnavailable
from studio.models.catalog import catalog, catalog_entry
from studio.models.resolve import model_shape, resolve


def test_catalog_is_valid_and_covers_the_families():
    entries = catalog()
    families = {e.family for e in entries}
    assert {"Qwen", "Llama", "Mistral", "Gemma", "Phi", "SmolLM", "Demo"} <= families
    assert len({e.id for e in entries}) == len(entries)
    assert catalog_entry("demo-tiny") is not None
    assert catalog_entry("meta-llama/Llama-3.1-8B-Instruct").gated


def test_resolve_hub_id_local_folder_and_rubbish(ws, tmp_path):
    hub = resolve(ws, "Qwen/Qwen2.5-0.5B-Instruct")
    assert hub.source == "Qwen/Qwen2.5-0.5B-Instruct" and not hub.local and hub.entry
    demo = resolve(ws, "demo-tiny")
    local = resolve(ws, demo.source)
    assert local.local and local.entry is None
    with pytest.raises(ModelUnavailable, match="config.json"):
        resolve(ws, str(tmp_path))
    with pytest.raises(ModelUnavailable, match="neither"):
        resolve(ws, "not a model")
    with pytest.raises(InvalidInput):
        resolve(ws, "  ")


def test_demo_tiny_round_trips_and_generates(ws):
    source = resolve(ws, "demo-tiny").source
    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my order?"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is my order?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    enc = tok(text, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    assert model.generation_config.eos_token_id[0] == tok.eos_token_id
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    shape = model_shape(ws, "demo-tiny")
    assert shape.vocab == len(tok) and shape.hidden == model.config.hidden_size


def test_demo_tiny_is_built_on_first_use(tmp_path):
    from studio.core.workspace import Workspace

    fresh = Workspace.open(tmp_path / "fresh")
    path = resolve(fresh, "demo-tiny").source
    assert (tmp_path / "fresh" / "models" / "demo-tiny" / "tokenizer.json").exists()
    assert resolve(fresh, "demo-tiny").source == path  # second use reuses it


def test_sizes_read_as_people_say_them():
    from studio.models.catalog import catalog_entry

    assert catalog_entry("demo-tiny").size == "0.87M"
    assert catalog_entry("HuggingFaceTB/SmolLM2-135M-Instruct").size == "135M"
    assert catalog_entry("meta-llama/Llama-3.1-8B-Instruct").size == "8.03B"
