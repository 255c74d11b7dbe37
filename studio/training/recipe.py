"""Small pure translators from a TrainConfig to the library objects that train it.

The training process and the GPU benchmark (bench/train_throughput.py) both call these, so what the
benchmark measures is exactly what a preset runs. No run folders, no SQLite here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studio.training.config import TrainConfig

if TYPE_CHECKING:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, PreTrainedModel
    from trl import SFTConfig


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def uses_4bit(cfg: TrainConfig) -> bool:
    """4-bit only where bitsandbytes truly trains in 4 bits: with CUDA (on a CPU it loads but repacks)."""
    return cfg.method == "qlora" and cuda_available()


def compute_dtype() -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on the CPU (no fast half precision there)."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def method_notice(cfg: TrainConfig) -> str | None:
    """The line a user must see when the run will not train the way the config asked."""
    if cuda_available():
        return None
    return (
        "No CUDA GPU here: training with LoRA in 32-bit on the CPU instead of "
        f"{'QLoRA in 4 bits' if cfg.method == 'qlora' else 'LoRA in 16 bits'}. "
        "Fine for demo-tiny; far too slow for real models."
    )


def quantization_config(cfg: TrainConfig) -> BitsAndBytesConfig | None:
    """4-bit NF4 with double quantization and bf16 compute on CUDA; None elsewhere (LoRA in 16/32-bit)."""
    if not uses_4bit(cfg):
        return None
    from transformers import BitsAndBytesConfig

    from studio.training import distributed

    extra = {}
    if distributed.strategy() == "fsdp":  # FSDP shards tensors of one dtype: pack the 4-bit weights in it
        extra["bnb_4bit_quant_storage"] = compute_dtype()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
        **extra,
    )


def attention_implementation() -> str:
    """PyTorch's fused scaled-dot-product attention: flash/memory-efficient kernels on CUDA, no extra package."""
    return "sdpa"


def load_base_model(cfg: TrainConfig, source: str, **kwargs: Any) -> PreTrainedModel:
    """The base model as training needs it: 4-bit on CUDA for qlora, else 16-bit (CUDA) or 32-bit (CPU).

    A 4-bit model is prepared for k-bit training: its base weights are frozen and, with gradient
    checkpointing, its inputs carry gradients so the adapters before each checkpoint learn. Unlike
    peft's prepare_model_for_kbit_training we keep embeddings and the LM head in bf16 instead of fp32:
    on Llama-3-8B that upcast alone costs 2 x 525M params x 2 bytes = 2.1 GB, which breaks the 8 GB
    low-memory preset, and TRL's QLoRA recipe trains the adapters in bf16 anyway.
    """
    from transformers import AutoModelForCausalLM

    quant = quantization_config(cfg)
    options: dict[str, Any] = {
        "dtype": compute_dtype(),
        "attn_implementation": attention_implementation(),
        "low_cpu_mem_usage": True,
    }
    if quant is not None:
        options["quantization_config"] = quant
    from studio.training import distributed

    if cuda_available() and distributed.strategy() != "fsdp":  # FSDP places the shards itself
        # the one GPU this process sees (CUDA_VISIBLE_DEVICES), or its own one of a DDP group's
        options["device_map"] = {"": distributed.local_rank()}
    options.update(kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, **options)
    model.config.use_cache = False  # the KV cache is useless while training and costs memory
    if quant is not None:
        for param in model.parameters():
            param.requires_grad = False
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    return model


def default_target_modules(model: Any) -> list[str] | str:
    """Attention and MLP projections by their usual names; else every linear layer (peft's 'all-linear')."""
    usual = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
             "qkv_proj", "gate_up_proj"]  # fmt: skip
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [m for m in usual if m in present]
    return found or "all-linear"


def lora_config(cfg: TrainConfig, target_modules: list[str] | str) -> LoraConfig:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules or target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def sft_config(cfg: TrainConfig, output_dir: str, **overrides: Any) -> SFTConfig:
    """TRL's SFTConfig for this run. Checkpoints go to output_dir; logging is ours (callbacks), not TRL's."""
    from trl import SFTConfig

    options = trainer_options(cfg, output_dir)
    options.update(packing=cfg.packing, completion_only_loss=cfg.answers_only_loss)
    options.update(overrides)
    return SFTConfig(**options)


def preference_config(cfg: TrainConfig, output_dir: str, **overrides: Any) -> Any:
    """TRL's DPOConfig, ORPOConfig or KTOConfig for this run: the same optimisation settings as SFT, plus beta.

    The reference of DPO and KTO is the policy with its adapter disabled (TRL does this for a peft model
    when no ref_model is given), or, for a run continued from another, a frozen copy of the starting
    adapter: adapter-sized, never a second copy of the model. ORPO needs no reference.
    """
    options = trainer_options(cfg, output_dir)
    options.update(beta=cfg.beta)
    options.update(overrides)
    return trainer_classes(cfg.objective)[0](**options)


def trainer_classes(objective: str) -> tuple[type, type]:
    """(config class, trainer class) of TRL for an objective."""
    if objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if objective == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    if objective == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    from trl import SFTConfig, SFTTrainer

    return SFTConfig, SFTTrainer


def trainer_options(cfg: TrainConfig, output_dir: str) -> dict[str, Any]:
    """The TrainingArguments every objective shares: steps, batch, schedule, precision, saving, logging."""
    on_cuda = cuda_available()
    evaluate_each = "steps" if cfg.eval_every else "epoch"
    save_each = "steps" if cfg.save_every else "epoch"
    options: dict[str, Any] = dict(
        output_dir=output_dir,
        seed=cfg.seed,
        data_seed=cfg.seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a share of the steps
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        max_length=cfg.max_length,
        # transformers 5 names it activation checkpointing (gradient_checkpointing is its deprecated alias)
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        eval_strategy=evaluate_each,
        eval_steps=cfg.eval_every or None,
        save_strategy=save_each,
        save_steps=cfg.save_every or None,
        save_total_limit=cfg.keep_checkpoints,
        logging_strategy="steps",
        logging_steps=cfg.log_every,
        logging_first_step=True,
        include_num_input_tokens_seen="non_padding",
        bf16=on_cuda and bf16_supported(),
        fp16=on_cuda and not bf16_supported(),
        use_cpu=not on_cuda,
        optim="adamw_torch_fused" if on_cuda else "adamw_torch",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    from studio.training import distributed

    if distributed.world_size() > 1:  # LoRA leaves no trained parameter unused: skip DDP's search for them
        options["ddp_find_unused_parameters"] = False
    return options


def to_prompt_completion(dataset: datasets.Dataset) -> datasets.Dataset:
    """`messages` (…, user, assistant) → conversational prompt/completion: TRL then puts the loss on the
    final answer and its end-of-turn token only (earlier turns are context)."""

    def split(row: dict) -> dict:
        messages = row["messages"]
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    return dataset.map(split, remove_columns=dataset.column_names)


def to_trainer_rows(cfg: TrainConfig, kind: str, dataset: datasets.Dataset) -> datasets.Dataset:
    """A dataset version's rows in the shape the objective's TRL trainer reads (studio.data.kinds)."""
    from studio.data.kinds import KINDS

    if kind == "sft":
        return to_prompt_completion(dataset)
    dataset = dataset.select_columns(list(KINDS[kind]))
    if cfg.objective == "kto" and kind == "preference":
        from trl.data_utils import unpair_preference_dataset

        return unpair_preference_dataset(dataset)  # chosen = a good answer, rejected = a bad one
    return dataset


def kto_weights(dataset: datasets.Dataset) -> dict[str, float]:
    """KTO's weights so good and bad answers count alike: TRL asks that desirable x good / (undesirable x bad)
    stay between 1 and 4/3; with 30 good and 10 bad answers the bad ones weigh 3."""
    labels = dataset["label"]
    good, bad = sum(1 for v in labels if v), sum(1 for v in labels if not v)
    if not good or not bad:
        return {}
    if good >= bad:
        return {"desirable_weight": 1.0, "undesirable_weight": round(good / bad, 4)}
    return {"desirable_weight": round(bad / good, 4), "undesirable_weight": 1.0}


def load_start_adapter(model: PreTrainedModel, adapter_dir: str) -> Any:
    """The base model with an earlier run's adapter on it, trainable: a continued run goes on from there."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
