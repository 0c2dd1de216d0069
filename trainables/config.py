"""Frozen-dataclass configs: built once from plain dicts (Ray's, the CLI's), validated, typed.

An unknown key or a bad value raises ConfigError naming the key, so a typo in `--set` or in a
search space fails loudly instead of silently training the default.

A config class derives from `Config` and declares each numeric field's range where the field is
declared, `lr: float = bounded(1e-3, gt=0)`; `Config.__post_init__` checks every field's type and
range from those declarations, then the class' `check()` (the rules between fields). A subclass that
only changes a default (`val_fraction: float = 0.15`) keeps the base field's range.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from typing import Any, Mapping, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it."""


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
        return True
    if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{key}: expected true/false, got {value!r}")


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """Converts `value` (often a string from the command line) to the field's declared type."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null", ""}):
            return None
        return _coerce(key, args[0], value)
    if origin is typing.Literal:
        choices = typing.get_args(kind)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")
    if origin is tuple:
        inner = typing.get_args(kind)[0]
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(key, inner, v) for v in items if v != "")
    if kind is bool:
        return _parse_bool(key, value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if kind is str:
        return str(value)
    return value


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls: type[C], values: Mapping[str, Any], base: C | None = None) -> C:
    """Builds `cls` from `values` over `base` (or the defaults); names any unknown key or bad value."""
    hints = typing.get_type_hints(cls)
    known = set(field_names(cls))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} for {cls.__name__} (known: {', '.join(sorted(known))})")
    coerced = {k: _coerce(k, hints[k], v) for k, v in values.items()}
    if base is not None:
        return dataclasses.replace(base, **coerced)
    return cls(**coerced)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: how nested configs become MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check(condition: bool, key: str, message: str) -> None:
    """Validation helper for __post_init__: raises ConfigError('key: message') when false."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


# ---------------------------------------------------------------- declared ranges, checked once
BOUNDS = "bounds"  # the dataclass field metadata key `bounded` writes


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range a numeric field's value (every item of a tuple field) must lie in; `note` says its
    unit or why, for the error message."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    note: str = ""

    def holds(self, value: float) -> bool:
        """In range, and finite: no config number means anything at nan or inf."""
        return (math.isfinite(value) and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        """'>= 1', 'in (0, 0.5)', 'in [0, 1] (pixel units)', '1' (a single allowed value)."""
        low = (f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None)
        high = (f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None)
        if self.ge is not None and self.ge == self.le:
            text = f"{self.ge:g}"
        elif low and high:
            text = f"in {low}, {high}"
        elif low:
            text = f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        elif high:
            text = f"{'<=' if self.le is not None else '<'} {high[:-1]}"
        else:
            text = "any number"
        return f"{text} ({self.note})" if self.note else text


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, note: str = "") -> Any:
    """A config field with its default and the range its value (each item, for a tuple) must lie in:
    `depth: int = bounded(2, ge=1)`."""
    return dataclasses.field(default=default, metadata={BOUNDS: Bounds(ge, gt, le, lt, note)})


def bounds_of(cls: type, name: str) -> Bounds | None:
    """The declared range of field `name`: its own, else that of the nearest base class declaring the
    field (a subclass that redeclares a field for another default keeps its range)."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and BOUNDS in f.metadata:
            return f.metadata[BOUNDS]
    return None


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one field is checked: its scalar type (bool, int, float, str or the Literal's choices),
    whether it is a tuple of those, whether None is allowed, and its declared range."""

    name: str
    kind: Any
    many: bool = False
    optional: bool = False
    bounds: Bounds | None = None


def _rule(cls: type, name: str, hint: Any) -> Rule:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = len(args) < len(typing.get_args(hint)), args[0]
    many = typing.get_origin(hint) is tuple
    if many:
        hint = typing.get_args(hint)[0]
    kind = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else hint
    return Rule(name, kind, many, optional, bounds_of(cls, name))


@cache
def rules(cls: type) -> tuple[Rule, ...]:
    """The checks of every field of config class `cls`, in field order (computed once per class)."""
    hints = typing.get_type_hints(cls)
    return tuple(_rule(cls, f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _type_error(rule: Rule, value: Any) -> str | None:
    """Why `value` (one item, for a tuple field) is not of the field's type, or None."""
    kind = rule.kind
    if isinstance(kind, tuple):  # a Literal's choices
        return None if value in kind else f"expected one of {list(kind)}, got {value!r}"
    if kind is bool:
        return None if isinstance(value, bool) else f"expected true/false, got {value!r}"
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {value!r}"
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r}"
    if kind is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    return None


def check_field(rule: Rule, value: Any) -> None:
    """Raises ConfigError('name: ...') when `value` has the wrong type or lies outside the range."""
    if value is None and rule.optional:
        return
    if rule.many and not isinstance(value, tuple):
        raise ConfigError(f"{rule.name}: expected a tuple, got {value!r}")
    items = value if rule.many else (value,)
    for item in items:
        if (error := _type_error(rule, item)) is not None:
            raise ConfigError(f"{rule.name}: {error}")
    if rule.bounds is not None and not all(rule.bounds.holds(v) for v in items):
        subject = "every value must be" if rule.many else "must be"
        raise ConfigError(f"{rule.name}: {subject} {rule.bounds}, got {value!r}")


class Config:
    """Base of the config dataclasses: after __init__ (and dataclasses.replace), every field is
    checked against its declared type and range, then `check()` runs the rules between fields."""

    def __post_init__(self) -> None:
        for rule in rules(type(self)):
            check_field(rule, getattr(self, rule.name))
        self.check()

    def check(self) -> None:
        """Rules between fields; a subclass overrides it, calling super().check() first."""
