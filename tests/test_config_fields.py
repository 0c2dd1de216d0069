"""Every field of every study's config is validated: a value of the wrong type and a value just outside
its declared range each raise ConfigError, one line starting with the field's name, whether the config
is built from a dict (Ray, --set) or constructed directly. A numeric field without a declared range
fails here, so a new field cannot slip through unchecked."""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.studies import all_studies
from trainables.config import Bounds, Config, ConfigError, bounded, bounds_of, from_dict

CONFIGS = sorted({s.config_cls for s in all_studies()}, key=lambda c: c.__name__)
SCALARS = (int, float, bool)
DRAWS = settings(max_examples=100, deadline=None, database=None)  # database=None: no .hypothesis folder


def scalar_type(hint: Any) -> tuple[type | None, bool]:
    """(int | float | bool, is a tuple of them) for a numeric or bool field's type hint, else (None, False)."""
    if typing.get_origin(hint) is tuple:
        inner = typing.get_args(hint)[0]
        return (inner, True) if inner in SCALARS else (None, False)
    return (hint, False) if hint in SCALARS else (None, False)


def checked_fields(cls: type) -> list[tuple[str, type, bool]]:
    """(name, scalar type, is a tuple) of every numeric and bool field of `cls`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, many = scalar_type(hints[f.name])
        if kind is not None:
            out.append((f.name, kind, many))
    return out


def unbounded(cls: type) -> list[str]:
    """The numeric fields of `cls` that declare no range."""
    return [name for name, kind, _ in checked_fields(cls) if kind is not bool
            and (bounds_of(cls, name) is None or bounds_of(cls, name) == Bounds())]


FIELDS = [pytest.param(cls, name, kind, many, id=f"{cls.__name__}.{name}")
          for cls in CONFIGS for name, kind, many in checked_fields(cls)]
NUMERIC = [p for p in FIELDS if p.values[2] is not bool]


def raises_naming(name: str, build: Any) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    assert message.startswith(f"{name}:") and "\n" not in message, message


def test_every_study_config_is_a_checked_config_with_valid_defaults():
    assert len(CONFIGS) >= 6
    for cls in CONFIGS:
        assert issubclass(cls, Config), cls
        cls()


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_declares_its_range(cls):
    assert unbounded(cls) == [], f"{cls.__name__}: declare a range with config.bounded(default, ge=..., ...)"


def test_an_undeclared_range_is_caught():
    @dataclasses.dataclass(frozen=True)
    class Sloppy(Config):
        steps: int = 3
        rate: float = bounded(0.1, gt=0)
        scales: tuple[float, ...] = ()
        flag: bool = False

    assert unbounded(Sloppy) == ["steps", "scales"]


# ---------------------------------------------------------------- just outside the range
def just_outside(bounds: Bounds, kind: type) -> list[float]:
    """The nearest values beyond each declared limit."""
    step = (lambda v, d: v + d) if kind is int else (lambda v, d: math.nextafter(v, d * math.inf))
    out = []
    if bounds.ge is not None:
        out.append(step(bounds.ge, -1))
    if bounds.gt is not None:
        out.append(bounds.gt)
    if bounds.le is not None:
        out.append(step(bounds.le, +1))
    if bounds.lt is not None:
        out.append(bounds.lt)
    return [kind(v) for v in out]


def beyond(bounds: Bounds, kind: type) -> st.SearchStrategy:
    """Any value beyond a declared limit (hypothesis draws them, the nearest included)."""
    parts = []
    if kind is int:
        if bounds.ge is not None:
            parts.append(st.integers(max_value=math.ceil(bounds.ge) - 1))
        if bounds.gt is not None:
            parts.append(st.integers(max_value=math.floor(bounds.gt)))
        if bounds.le is not None:
            parts.append(st.integers(min_value=math.floor(bounds.le) + 1))
        if bounds.lt is not None:
            parts.append(st.integers(min_value=math.ceil(bounds.lt)))
    else:
        if bounds.ge is not None:
            parts.append(st.floats(max_value=bounds.ge, exclude_max=True, allow_nan=False))
        if bounds.gt is not None:
            parts.append(st.floats(max_value=bounds.gt, allow_nan=False))
        if bounds.le is not None:
            parts.append(st.floats(min_value=bounds.le, exclude_min=True, allow_nan=False))
        if bounds.lt is not None:
            parts.append(st.floats(min_value=bounds.lt, allow_nan=False))
        parts.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(parts)


@pytest.mark.parametrize("cls, name, kind, many", NUMERIC)
def test_a_value_just_outside_the_range_names_the_field(cls, name, kind, many):
    bounds = bounds_of(cls, name)
    for value in just_outside(bounds, kind):
        value = (value,) if many else value
        raises_naming(name, lambda: cls(**{name: value}))
        raises_naming(name, lambda: from_dict(cls, {name: value}))
        text = ",".join(map(repr, value)) if many else repr(value)  # as --set gives it
        raises_naming(name, lambda: from_dict(cls, {name: text}))


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@DRAWS
@given(data=st.data())
def test_any_value_beyond_a_range_names_its_field(cls, data):
    name, kind, many = data.draw(st.sampled_from([f for f in checked_fields(cls) if f[1] is not bool]))
    value = data.draw(beyond(bounds_of(cls, name), kind))
    value = (value,) if many else value
    raises_naming(name, lambda: cls(**{name: value}))
    raises_naming(name, lambda: from_dict(cls, {name: value}))


# ---------------------------------------------------------------- wrong types
def parses_as(kind: type, text: str) -> bool:
    """Whether the command-line string `text` is a value of `kind` (as config._coerce reads it)."""
    if kind is bool:
        return text.lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}
    try:
        value = kind(text)
    except (TypeError, ValueError):
        return False
    return kind is not float or math.isfinite(value)  # nan and inf parse, then fail the range


def wrong_strings(kind: type) -> st.SearchStrategy:
    return st.text(max_size=8).filter(lambda s: "," not in s and s.strip() != "" and not parses_as(kind, s))


WRONG_DIRECT = {int: ["1", 1.5, True, None], float: ["0.5", True, None, [0.5]], bool: [1, 0, "true", None]}


@pytest.mark.parametrize("cls, name, kind, many", FIELDS)
def test_a_value_of_the_wrong_type_names_the_field(cls, name, kind, many):
    for value in WRONG_DIRECT[kind]:
        wrong = (value,) if many else value
        raises_naming(name, lambda: cls(**{name: wrong}))
    if many:
        raises_naming(name, lambda: cls(**{name: list(getattr(cls(), name))}))  # a list is not a tuple
    raises_naming(name, lambda: from_dict(cls, {name: "1.5" if kind is int else "maybe"}))


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@DRAWS
@given(data=st.data())
def test_any_unreadable_string_names_its_field(cls, data):
    name, kind, _ = data.draw(st.sampled_from(checked_fields(cls)))
    text = data.draw(wrong_strings(kind))
    raises_naming(name, lambda: from_dict(cls, {name: text}))
