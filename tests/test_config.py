"""Configs reject unknown keys and bad values, naming the key; strings from --set are typed."""
from __future__ import annotations

import pytest

from trainables.config import ConfigError, flatten, from_dict
from trainables.lab1.classifier import Lab1Config


def test_strings_are_coerced_to_declared_types():
    cfg = from_dict(Lab1Config, {"depth": "8", "residual": "true", "lr": "3e-3", "classes": "0,1,2", "model": "cnn"})
    assert cfg.depth == 8 and cfg.residual is True and cfg.lr == 0.003 and cfg.classes == (0, 1, 2)
    assert cfg.model == "cnn"


@pytest.mark.parametrize("values, key", [
    ({"dpeth": 3}, "dpeth"),
    ({"depth": 0}, "depth"),
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
