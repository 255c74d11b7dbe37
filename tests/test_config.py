"""TrainConfig: unknown keys refused, numbers bounded, every problem named in one message."""

import pytest

from studio.core.errors import InvalidInput
from studio.training.config import PRESET_FIELDS, TrainConfig, field_help, load_yaml, parse_value, validate


def test_defaults_are_valid_and_round_trip_through_yaml():
    cfg = TrainConfig(base_model="demo-tiny", dataset_id="ds-abc")
    assert cfg.method == "qlora" and cfg.answers_only_loss is True
    assert load_yaml(cfg.to_yaml()) == cfg


def test_every_field_has_help_text_for_the_ui():
    for name in TrainConfig.model_fields:
        assert len(field_help(name)) > 15, name


def test_unknown_key_is_named_with_the_fix():
    with pytest.raises(InvalidInput) as err:
        validate({"base_model": "m", "dataset_id": "d", "lora_rank": 8}, "your settings")
    assert "'lora_rank' is not a training setting" in err.value.message
    assert "lora_r" in err.value.fix


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("lora_r", 0, "greater than or equal to 1"),
        ("learning_rate", 5.0, "less than or equal to 0.05"),
        ("max_length", 8, "greater than or equal to 32"),
        ("method", "8bit", "'qlora' or 'lora'"),
        ("micro_batch_size", "many", "valid integer"),
        ("target_modules", ["q_proj", "rm -rf"], "not a layer name"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(key, value, words):
    with pytest.raises(InvalidInput) as err:
        validate({"base_model": "m", "dataset_id": "d", key: value})
    assert f"'{key}" in err.value.message and words in err.value.message


def test_all_problems_are_reported_at_once():
    with pytest.raises(InvalidInput) as err:
        validate({"base_model": " ", "dataset_id": "d", "lora_r": -1, "epochs": 0})
    message = err.value.message
    assert "'base_model'" in message and "'lora_r'" in message and "'epochs'" in message


def test_assignment_is_validated_too():
    cfg = TrainConfig(base_model="m", dataset_id="d")
    with pytest.raises(ValueError):
        cfg.lora_dropout = 0.9


def test_parse_value_reads_yaml_scalars_and_refuses_unknown_keys():
    assert parse_value("learning_rate", "1e-4") == "1e-4"  # YAML 1.1 reads it as text; pydantic converts it
    assert validate({"base_model": "m", "dataset_id": "d", "learning_rate": "1e-4"}).learning_rate == 1e-4
    assert parse_value("packing", "true") is True
    assert parse_value("target_modules", "[q_proj, v_proj]") == ["q_proj", "v_proj"]
    with pytest.raises(InvalidInput, match="'lr' is not a training setting"):
        parse_value("lr", "1")
    assert "base_model" not in PRESET_FIELDS
