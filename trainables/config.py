"""Frozen-dataclass configs: built once from plain dicts (Ray's, the CLI's), validated, typed.

An unknown key or a bad value raises ConfigError naming the key, so a typo in `--set` or in a
search space fails loudly instead of silently training the default.
"""
from __future__ import annotations

import dataclasses
import types
import typing
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
