"""Configs reject unknown keys and bad values, naming the key; strings from --set are typed."""
from __future__ import annotations

import dataclasses

import pytest

from trainables.config import Bounds, ConfigError, bounds_of, field_names, flatten, from_dict
from trainables.lab1.cam import CamConfig
from trainables.lab1.classifier import Lab1Config
from trainables.lab1.source import SourceFields, source_config
from trainables.lab1.transfer import TransferConfig
from trainables.lab4.robustness import Lab4Config
from trainables.recipe import ImageRecipe, TrainingRecipe


def test_strings_are_coerced_to_declared_types():
    cfg = from_dict(Lab1Config, {"depth": "8", "residual": "true", "lr": "3e-3", "classes": "0,1,2", "model": "cnn"})
    assert cfg.depth == 8 and cfg.residual is True and cfg.lr == 0.003 and cfg.classes == (0, 1, 2)
    assert cfg.model == "cnn"


@pytest.mark.parametrize("values, key", [
    ({"dpeth": 3}, "dpeth"),
    ({"depth": -1}, "depth"),
    ({"model": "cnn", "depth": 0}, "depth"),  # depth 0 (one hidden layer) is the MLP's only
    ({"depth": "two"}, "depth"),
    ({"depth": 2.5}, "depth"),
    ({"lr": 0}, "lr"),
    ({"lr": "-1"}, "lr"),
    ({"width": 0}, "width"),
    ({"residual": "maybe"}, "residual"),
    ({"model": "transformer"}, "model"),
    ({"epochs": 0}, "epochs"),
])
def test_bad_keys_and_values_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(Lab1Config, values)


def test_configs_are_frozen_and_overridable_from_a_base():
    base = Lab1Config(depth=4)
    cfg = from_dict(Lab1Config, {"width": "32"}, base=base)
    assert (cfg.depth, cfg.width) == (4, 32)
    with pytest.raises(Exception):
        cfg.depth = 3  # type: ignore[misc]


def test_flatten_nests_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


# ---------------------------------------------------------------- one image-training recipe
def test_the_image_configs_share_the_recipe_and_its_ranges():
    """Lab 1, Lab 4, the transfer target and the source CNN of transfer and CAM check each recipe
    field with the one range declared in trainables/recipe.py."""
    for cls in (Lab1Config, Lab4Config, TransferConfig):
        assert issubclass(cls, TrainingRecipe)
    for f in dataclasses.fields(ImageRecipe):
        declared = bounds_of(ImageRecipe, f.name)
        for cls in (Lab1Config, Lab4Config, TransferConfig, CamConfig):
            own = issubclass(cls, TrainingRecipe) and f.name in field_names(cls)  # CAM's epochs are its own
            if own and (cls, f.name) != (Lab4Config, "classes"):  # Lab 4 narrows classes to labels 0..9
                assert bounds_of(cls, f.name) is declared, (cls.__name__, f.name)
            if f"source_{f.name}" in field_names(cls):
                assert bounds_of(cls, f"source_{f.name}") == declared, (cls.__name__, f.name)


@pytest.mark.parametrize("cls, values, key", [
    (TransferConfig, {"momentum": "1.5"}, "momentum"),
    (TransferConfig, {"crop_pad": "-1"}, "crop_pad"),
    (TransferConfig, {"weight_decay": "-0.1"}, "weight_decay"),
    (TransferConfig, {"source_lr": "0"}, "source_lr"),
    (CamConfig, {"source_crop_pad": "-1"}, "source_crop_pad"),
    (Lab4Config, {"crop_pad": "-1"}, "crop_pad"),
    (Lab4Config, {"max_train": "-1"}, "max_train"),
    (Lab4Config, {"classes": "0,10"}, "classes"),
])
def test_recipe_checks_hold_in_every_image_config(cls, values, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        from_dict(cls, values)


def test_range_messages_read_like_the_rule():
    assert str(Bounds(ge=1)) == ">= 1" and str(Bounds(gt=0, lt=0.5)) == "in (0, 0.5)"
    assert str(Bounds(ge=0, le=1, note="pixel units")) == "in [0, 1] (pixel units)" and str(Bounds(ge=1, le=1)) == "1"
    with pytest.raises(ConfigError, match=r"^val_fraction: must be in \(0, 0.5\), got 0.5$"):
        from_dict(Lab1Config, {"val_fraction": "0.5"})
    with pytest.raises(ConfigError, match=r"^lr: must be > 0, got inf$"):
        from_dict(Lab1Config, {"lr": "inf"})


def test_the_source_cnn_is_trained_with_the_source_fields_as_its_recipe():
    cfg = CamConfig(source_width=8, source_lr=0.01, source_classes=(1, 2), source_crop_pad=0)
    src = source_config(cfg, seed=5)
    assert (src.width, src.lr, src.classes, src.crop_pad, src.seed) == (8, 0.01, (1, 2), 0, 5)
    recipe = {f.name.removeprefix("source_") for f in dataclasses.fields(SourceFields)} - {"run", "checkpoint", "cache"}
    assert recipe <= set(field_names(Lab1Config))


def test_the_dataset_type_names_every_dataset_the_data_module_knows():
    import typing

    from trainables.data import DATASETS, Dataset

    assert typing.get_args(Dataset) == DATASETS
