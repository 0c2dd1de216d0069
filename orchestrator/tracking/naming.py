"""Child run names that say what a trial tried: `depth=16 plain lr=2.0e-3`, in the order the search
space sampled its parameters. The Tune trial id stays on the run as the `trial_id` tag.

Names are short (values rounded to 2 significant digits) and unique within a study invocation: when
two trials round to the same name, the later one gets more digits, and as a last resort its trial id.
"""
from __future__ import annotations

import math
from typing import Any, Collection, Mapping

# Boolean parameters read as words: `residual=False` is a plain net.
BOOL_WORDS: Mapping[str, tuple[str, str]] = {"residual": ("residual", "plain")}
MAX_LEN = 120  # characters; MLflow allows 250, a table column shows about 40


def format_value(value: Any, digits: int = 2) -> str:
    """A parameter value as it reads in a run name: floats to `digits` significant digits
    (2.0e-3, 0.05, 1.5e+4), everything else as text."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return str(value)
    if 1e-2 <= abs(value) < 1e4:  # plain decimals: 0.05, 0.031, 2.2, 1200
        return f"{round(value, digits - 1 - math.floor(math.log10(abs(value)))):g}"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"  # 2.0e-3, 1.5e4


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe(sampled: Mapping[str, Any], digits: int = 2) -> str:
    """What a trial tried, as one short line (empty when nothing was sampled)."""
    parts = []
    for key, value in _flat(sampled).items():
        name = key.rsplit("/", 1)[-1]
        if isinstance(value, bool):
            yes, no = BOOL_WORDS.get(name, (name, f"no-{name}"))
            parts.append(yes if value else no)
        else:
            parts.append(f"{name}={format_value(value, digits)}")
    return " ".join(parts)


def run_name(sampled: Mapping[str, Any], trial_id: str, taken: Collection[str]) -> str:
    """A name for the trial's run that no run in `taken` has."""
    for digits in (2, 3, 4, 6):
        name = describe(sampled, digits)[:MAX_LEN] or f"trial {trial_id}"
        if name not in taken:
            return name
    return f"{name} ({trial_id})"
