"""The training paths the throughput benchmark measures side by side, each as its own authors would run it.

- baseline: transformers Trainer + peft + bitsandbytes, padded batches (what most studios run);
- baseline-packed: the same with padding-free packing (transformers' DataCollatorWithFlattening): what a
  careful engineer would write by hand;
- studio: the preset through the studio's own recipe (studio.training.recipe) and TRL's SFTTrainer;
- unsloth: Unsloth's FastLanguageModel (its own 4-bit loader, LoRA patching and gradient checkpointing) with
  TRL's SFTTrainer, as its documentation shows. It needs CUDA, and must be imported before transformers
  (bench/train_throughput.py does that in the worker process).

Each returns (trainer, token counter, whether gradient checkpointing recomputes activations).
"""

from __future__ import annotations

from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TokenCounter:
    """Wraps a data collator; records real (non-pad), processed and trained tokens of each micro-batch."""

    def __init__(self, collate, pad_id: int):
        self.collate, self.pad_id, self.batches = collate, pad_id, []

    def __call__(self, features):
        batch = self.collate(features)
        ids = batch["input_ids"]
        labels = batch.get("labels")
        trained = int((labels != -100).sum()) if labels is not None else 0
        self.batches.append({"real": int((ids != self.pad_id).sum()), "shape": list(ids.shape), "trained": trained})
        return batch


def encode_answers_only(rows: list, tok, max_length: int) -> list[dict]:
    """Token ids and labels with the prompt masked, as TRL does for prompt/completion rows."""
    encoded = []
    for row in rows:
        prompt = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(row["messages"], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"][: max_length]
        labels = ([-100] * len(p_ids) + ids[len(p_ids):])[: len(ids)]
        encoded.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return encoded


def train_baseline(cfg, model_dir: Path, rows: list, tok, out_dir: str, counter_pad: int, packed: bool = False):
    """transformers Trainer + peft + bitsandbytes: padded batches, or with `packed` every micro-batch
    flattened into one sequence with restarting position ids (DataCollatorWithFlattening, no padding)."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    cuda = torch.cuda.is_available()
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    ) if cuda else None  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quant, dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation="sdpa", device_map={"": 0} if cuda else None,
    )  # fmt: skip
    model.config.use_cache = False
    if cuda:  # fp32 embeddings/head/norms, frozen base, input grads for checkpointing: peft's QLoRA recipe
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))  # fmt: skip
    encoded = encode_answers_only(rows, tok, cfg.max_length)
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule, warmup_steps=cfg.warmup_ratio, max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=True,
        bf16=cuda, use_cpu=not cuda, logging_steps=1, save_strategy="no", report_to="none", seed=cfg.seed,
        data_seed=cfg.seed, disable_tqdm=True,
    )  # fmt: skip
    if packed:
        from transformers import DataCollatorWithFlattening

        collate = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        collate = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    counter = TokenCounter(collate, counter_pad)
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(encoded),
                      data_collator=counter)  # fmt: skip
    return trainer, counter, True


def train_studio(cfg, variant, model_dir: Path, rows: list, tok, out_dir: str, counter_pad: int):
    """Exactly what the preset runs: studio.training.recipe's translators + TRL's SFTTrainer."""
    import datasets
    from trl import SFTTrainer

    from studio.training import attention, recipe

    model = recipe.load_base_model(cfg, str(model_dir))
    if variant.attn == attention.VARLEN:
        attention.register()
    if variant.attn:
        model.set_attn_implementation(variant.attn)
    args = recipe.sft_config(cfg, out_dir, logging_steps=1, save_strategy="no", eval_strategy="no", **variant.sft)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=recipe.to_prompt_completion(datasets.Dataset.from_list(rows)),
        processing_class=tok, peft_config=recipe.lora_config(cfg, recipe.default_target_modules(model)),
    )  # fmt: skip
    counter = TokenCounter(trainer.data_collator, counter_pad)
    trainer.data_collator = counter
    return trainer, counter, cfg.gradient_checkpointing


def train_unsloth(cfg, model_dir: Path, rows: list, tok, out_dir: str, counter_pad: int, dropout: float = 0.0):
    """Unsloth's own path: FastLanguageModel loads the model 4-bit (NF4 + double quantisation) and patches
    attention, RoPE, RMSNorm, SwiGLU and the LoRA layers; "unsloth" gradient checkpointing offloads activations;
    TRL's SFTTrainer with padding-free packing. LoRA dropout 0 by default: its fast LoRA kernels need it."""
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(model_dir), max_seq_length=cfg.max_length, dtype=torch.bfloat16, load_in_4bit=True,
    )  # fmt: skip
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=dropout, target_modules=TARGETS,
        bias="none", use_gradient_checkpointing="unsloth", random_state=cfg.seed,
    )  # fmt: skip
    args = SFTConfig(
        output_dir=out_dir, per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule, warmup_steps=cfg.warmup_ratio, max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, max_length=cfg.max_length,
        packing=cfg.packing, completion_only_loss=True, bf16=True, logging_steps=1, save_strategy="no",
        report_to="none", seed=cfg.seed, data_seed=cfg.seed, disable_tqdm=True, dataset_num_proc=1,
    )  # fmt: skip
    from studio.training import recipe  # the same prompt/completion rows as the studio's path

    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=recipe.to_prompt_completion(datasets.Dataset.from_list(rows)))  # fmt: skip
    counter = TokenCounter(trainer.data_collator, counter_pad)
    trainer.data_collator = counter
    return trainer, counter, True
