"""Every preset in presets/*.yaml loads, validates, explains itself; overrides are validated like it."""

import pytest

from studio.core.errors import InvalidInput, NotFound
from studio.training.config import TrainConfig
from studio.training.presets import (
    DEFAULT_PRESET,
    build_config,
    load_preset,
    parse_overrides,
    parse_preset,
    preset_names,
)

EXPECTED = {"quick-test", "balanced", "quality", "low-memory", "long-context"}


def test_the_five_presets_exist():
    assert EXPECTED <= set(preset_names())
    assert DEFAULT_PRESET == "balanced"


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_validates(name):
    preset = load_preset(name)
    assert len(preset.about) > 30 and len(preset.cost) > 20
    assert preset.overrides, "a preset with no settings is not a preset"
    cfg = build_config("demo-tiny", "ds-x", name)
    assert isinstance(cfg, TrainConfig)
    for key, value in preset.overrides.items():
        assert getattr(cfg, key) == pytest.approx(value) if isinstance(value, float) else getattr(cfg, key) == value
    with open(preset.path, encoding="utf-8") as f:
        assert f.read().count("#") >= 5, "presets carry comments with reasons and numbers"


def test_presets_differ_where_they_should():
    low, balanced, quality = (load_preset(n).values() for n in ("low-memory", "balanced", "quality"))
    assert low["micro_batch_size"] < balanced["micro_batch_size"]
    assert quality["lora_r"] > balanced["lora_r"]
    assert load_preset("long-context").values()["max_length"] > balanced["max_length"]
    assert load_preset("quick-test").values()["max_steps"] > 0


def test_a_bad_key_in_a_preset_is_named():
    with pytest.raises(InvalidInput) as err:
        parse_preset("mine", "about: a test preset for people\ncost: nothing at all really\nlora_rank: 8\n")
    assert "preset 'mine'" in err.value.message and "'lora_rank'" in err.value.message


def test_a_preset_may_not_choose_the_model_or_say_nothing():
    with pytest.raises(InvalidInput, match="base_model"):
        parse_preset("x", "about: some words here\ncost: some words\nbase_model: foo\n")
    with pytest.raises(InvalidInput, match="no about"):
        parse_preset("x", "cost: some words\nlora_r: 8\n")


def test_overrides_win_and_are_validated():
    cfg = build_config("demo-tiny", "ds-x", "balanced", parse_overrides(["lora_r=8", "learning_rate=1e-4"]))
    assert cfg.lora_r == 8 and cfg.learning_rate == 1e-4
    with pytest.raises(InvalidInput, match="'lora_r' input should be less than or equal to 256"):
        build_config("demo-tiny", "ds-x", "balanced", {"lora_r": 1000})
    with pytest.raises(InvalidInput, match="not a setting=value pair"):
        parse_overrides(["lora_r"])
    with pytest.raises(NotFound, match="no preset called 'fast'"):
        build_config("demo-tiny", "ds-x", "fast")
