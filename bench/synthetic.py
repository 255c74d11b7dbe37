"""The benchmark's model and data: a Llama of a catalog entry's shape with random weights, saved like a hub
model, a word-level tokenizer (one token per word, so synthetic rows have exactly the lengths drawn) and chat
rows with log-normal lengths. Used by bench/train_throughput.py and its CPU test."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

SHAPES = {"llama-8b": "meta-llama/Llama-3.1-8B-Instruct", "llama-1b": "meta-llama/Llama-3.2-1B-Instruct"}
TIED = {"llama-1b", "tiny"}  # Llama 3.2 1B shares its embedding and LM head; 3.1 8B does not
TINY = dict(hidden=64, layers=2, intermediate=176, heads=4, kv_heads=2, vocab=512)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "user", "assistant", "system"]
TEMPLATE_TOKENS = 6  # <|im_start|> user ... <|im_end|> <|im_start|> assistant ... <|im_end|>


def shape_of(name: str):
    from studio.models.catalog import Shape, catalog_entry

    return Shape(**TINY) if name == "tiny" else catalog_entry(SHAPES[name]).shape


def word_tokenizer(vocab: int):
    """One token per word `w<id>`, so synthetic rows have exactly the lengths drawn; ChatML like the studio."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from studio.models.demo import CHATML

    table = {tok: i for i, tok in enumerate(SPECIAL)}
    table.update({f"w{i}": i for i in range(len(SPECIAL), vocab)})
    core = Tokenizer(models.WordLevel(table, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]",
        additional_special_tokens=["<|im_start|>"], model_input_names=["input_ids", "attention_mask"],
        chat_template=CHATML,
    )  # fmt: skip


def build_model(shape_name: str, out: Path) -> dict:
    """A random-weight Llama of the named shape, built on the GPU in bf16 (CPU: fp32), saved like a hub model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = shape_of(shape_name)
    tok = word_tokenizer(shape.vocab)
    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=shape_name in TIED,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    started = time.perf_counter()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, max_shard_size="4GB")
    tok.save_pretrained(out)
    info = {"shape": shape_name, "params": params, "build_s": round(time.perf_counter() - started, 1)}
    (out / "bench-model.json").write_text(json.dumps(info))
    return info


def ensure_model(shape_name: str, models_dir: Path) -> tuple[Path, dict]:
    out = models_dir / shape_name
    if not (out / "bench-model.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        build_model(shape_name, out)
    return out, json.loads((out / "bench-model.json").read_text())


def synthetic_rows(n: int, vocab: int, max_length: int, median: int, seed: int = 0, sigma: float = 0.7) -> list:
    """Chat rows whose rendered lengths are log-normal (median `median`, capped at max_length).

    Words are Zipf-distributed, so the loss has something to learn; the answer is 20-60% of each row.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), sigma, n).astype(int), TEMPLATE_TOKENS + 4, max_length)
    first = len(SPECIAL)

    def words(count: int) -> str:
        ids = first + (rng.zipf(1.3, count) - 1) % (vocab - first)
        return " ".join(f"w{i}" for i in ids)

    rows = []
    for total in lengths:
        body = int(total) - TEMPLATE_TOKENS
        answer = max(2, int(body * rng.uniform(0.2, 0.6)))
        rows.append({"messages": [{"role": "user", "content": words(max(1, body - answer))},
                                  {"role": "assistant", "content": words(answer)}]})  # fmt: skip
    return rows
