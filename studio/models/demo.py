"""demo-tiny: an offline base model, built in seconds into the workspace on first use.

A byte-level BPE tokenizer trained with `tokenizers` on assets/demo_corpus.txt, a ChatML chat
template, and a small Llama-architecture model with random weights, saved with save_pretrained
so that it loads through the same AutoTokenizer / AutoModelForCausalLM path as any hub model.
It knows no language: fine-tuning is what teaches it the answers of a dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from studio.core.paths import ASSETS
from studio.data.templates import CHATML

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

CORPUS = ASSETS / "demo_corpus.txt"
VOCAB_SIZE = 2048  # a BPE on ~3 KB of text stops earlier; byte-level, so any text still encodes
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ~0.9M parameters: big enough to memorise a sample sheet's answers with LoRA in a minute on a
# CPU, small enough to build and load in about a second.
ARCH = dict(
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    # With tied embeddings at the usual std 0.02 in 128 dimensions the logits cannot exceed ~2.6,
    # so the loss cannot fall below ~4.4 nats: quick-test learned nothing recognisable. At 0.1 it
    # reaches loss ~0.6 on the support FAQ in 100 steps (measured).
    initializer_range=0.1,
)


def demo_model_dir(ws: Workspace) -> Path:
    return ws.models_dir / "demo-tiny"


def ensure_demo_model(ws: Workspace) -> Path:
    """Return the demo model's folder, building it first if this workspace has none."""
    target = demo_model_dir(ws)
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".demo-tiny-", dir=ws.models_dir))
    try:
        build_demo_model(tmp)
        try:
            os.rename(tmp, target)  # atomic: a second builder racing us loses cleanly
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_demo_model(out: Path, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train([str(CORPUS)], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
        chat_template=CHATML,
        model_max_length=ARCH["max_position_embeddings"],
    )
    im_end, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=pad,
        **ARCH,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end, pad], pad_token_id=pad, max_new_tokens=64, do_sample=False
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
