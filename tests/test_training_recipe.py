"""The recipe's translators, checked on demo-tiny in this process (no training)."""

import datasets
import pytest
from device import COMPUTE_DTYPE, CUDA

from studio.training import recipe
from studio.training.presets import build_config


@pytest.fixture
def cfg():
    return build_config("demo-tiny", "ds-x", "quick-test")


def test_the_method_follows_the_device(cfg):
    """QLoRA asked: NF4 4-bit with double quantization on CUDA, no notice; LoRA in 32-bit with a notice elsewhere."""
    quant = recipe.quantization_config(cfg)
    args = recipe.sft_config(cfg, "/tmp/unused")
    if CUDA:
        assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
        assert str(quant.bnb_4bit_compute_dtype) == f"torch.{COMPUTE_DTYPE}"
        assert recipe.method_notice(cfg) is None
        assert not args.use_cpu and args.bf16 is (COMPUTE_DTYPE == "bfloat16")
    else:
        assert quant is None and "32-bit" in recipe.method_notice(cfg)
        assert args.use_cpu and not args.bf16
    assert args.completion_only_loss is True
    assert args.max_length == cfg.max_length and args.max_steps == cfg.max_steps == 100
    assert args.learning_rate == cfg.learning_rate
    assert args.save_total_limit == cfg.keep_checkpoints and args.eval_steps == 20


def test_lora_config_follows_the_config(cfg):
    lora = recipe.lora_config(cfg.model_copy(update={"lora_r": 4, "lora_alpha": 8}), ["q_proj", "v_proj"])
    assert lora.r == 4 and lora.lora_alpha == 8 and set(lora.target_modules) == {"q_proj", "v_proj"}
    chosen = recipe.lora_config(cfg.model_copy(update={"target_modules": ["o_proj"]}), ["q_proj"])
    assert set(chosen.target_modules) == {"o_proj"}


def test_trained_tokens_are_exactly_the_answer_and_its_end_of_turn(ws, cfg):
    """Decode the labels TRL builds from a rendered example: only the answer + <|im_end|> may be trained."""
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from studio.models.resolve import resolve

    source = resolve(ws, "demo-tiny").source
    tokenizer = AutoTokenizer.from_pretrained(source)
    messages = [
        {"role": "system", "content": "You answer for the support team."},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "Follow your parcel with the tracking number."},
    ]
    data = recipe.to_prompt_completion(datasets.Dataset.from_list([{"messages": messages}]))
    assert data[0]["prompt"] == messages[:2] and data[0]["completion"] == messages[2:]
    model = recipe.load_base_model(cfg, source)
    args = recipe.sft_config(cfg, str(ws.home / "out"), eval_strategy="no")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=recipe.lora_config(cfg, ["q_proj", "v_proj"]))
    example = trainer.train_dataset[0]
    trained = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    assert tokenizer.decode(trained) == "Follow your parcel with the tracking number.<|im_end|>\n"
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(example["input_ids"]) == rendered

    whole = cfg.model_copy(update={"answers_only_loss": False})
    everything = SFTTrainer(
        model=recipe.load_base_model(cfg, source),
        args=recipe.sft_config(whole, str(ws.home / "o2"), eval_strategy="no"),
        train_dataset=data, processing_class=tokenizer, peft_config=recipe.lora_config(cfg, ["q_proj"]),
    ).train_dataset[0]
    assert all(label != -100 for label in everything["labels"])


def test_default_targets_are_the_projections(ws, cfg):
    from studio.models.resolve import resolve

    model = recipe.load_base_model(cfg, resolve(ws, "demo-tiny").source)
    assert recipe.default_target_modules(model) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                   "up_proj", "down_proj"]
    # float32 on the CPU; on CUDA the 4-bit model keeps its embeddings and norms in the compute dtype
    assert str(model.dtype) == f"torch.{COMPUTE_DTYPE}"
    assert bool(getattr(model, "is_loaded_in_4bit", False)) is CUDA


def test_examples_kept_counts_examples_not_packed_rows():
    """Packing puts several examples in a row: the notice about skipped and cut examples counts the examples
    (45 short rows packed into 2 used to read as '43 of 45 examples had no answer left')."""
    from trl.data_utils import pack_dataset

    from studio.training.run import _examples_kept

    rows = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]] * 9 + [list(range(20))]})
    assert _examples_kept(rows, 16) == (10, 1)
    packed = pack_dataset(rows, seq_length=16)
    assert len(packed) < 10 and _examples_kept(packed, 16) == (10, 1)
