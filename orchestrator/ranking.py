"""What "the best trial" means, written once: console, MLflow tags and notes, repeats and reports all rank with it.

A trial's score is the best value of the study's metric over its epochs (max or min by the study's
mode): `best_<metric>` where a row has it (the tracker logs it on every child run), else `<metric>`
(rows the tracker built itself, where `<metric>` already holds that best, and runs logged before
`best_<metric>` existed). Trials are ranked by that score.

Rows are plain dicts with a `metrics` mapping and an id: the Tune trial id (`trial_id`, or the
`trial_id` tag of a run read back from MLflow), else `run_id`. A row without a finite score (a trial
that never reported the metric, or reported NaN) is not ranked, nor is a row whose `status` says its
run did not finish (FAILED, KILLED, RUNNING: a partial history is not a result). Ties are broken by
the id, ascending, so the same rows always give the same winner whichever order they arrive in
(MLflow's search order and Tune's trial order differ).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence, TypeVar

R = TypeVar("R", bound=Mapping[str, Any])
MODES = ("max", "min")


def best_key(metric: str) -> str:
    """The name under which a trial's best value of `metric` is logged (child and parent runs)."""
    return f"best_{metric}"


def row_id(row: Mapping[str, Any]) -> str:
    """The tie-break key: the trial id (a tracker row's, or a read-back run's tag), else the run id."""
    return str(row.get("trial_id") or (row.get("tags") or {}).get("trial_id") or row.get("run_id") or "")


def score(row: Mapping[str, Any], metric: str) -> float | None:
    """The row's value of `metric`, or None when it has no finite value."""
    value = (row.get("metrics") or {}).get(metric)
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def trial_score(row: Mapping[str, Any], metric: str) -> float | None:
    """What a trial is ranked by: its `best_<metric>`, else its `<metric>` (see the module docstring)."""
    best = score(row, best_key(metric))
    return best if best is not None else score(row, metric)


def finished(row: Mapping[str, Any]) -> bool:
    """A row without a status (a plain dict) counts as finished; a run's status must be FINISHED."""
    return row.get("status") in (None, "FINISHED")


def rank(rows: Iterable[R], metric: str, mode: str, key: Callable[[R], str] = row_id) -> list[R]:
    """Finished rows that have a score, best first (`mode` max or min), ties broken by `key` ascending."""
    _check(mode)
    sign = -1.0 if mode == "max" else 1.0
    scored = [(trial_score(r, metric), r) for r in rows if finished(r)]
    return [r for s, r in sorted(((s, r) for s, r in scored if s is not None), key=lambda p: (sign * p[0], key(p[1])))]


def best(rows: Iterable[R], metric: str, mode: str, key: Callable[[R], str] = row_id) -> R | None:
    """The best row by `metric` and `mode` (see `rank`), or None when no row is ranked."""
    ranked = rank(rows, metric, mode, key)
    return ranked[0] if ranked else None


def best_value(values: Iterable[float], mode: str) -> float:
    """The best of a metric's history (max or min); non-finite values are skipped."""
    _check(mode)
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        raise ValueError("no finite value to rank")
    return max(finite) if mode == "max" else min(finite)


def group_order(values: Sequence[Any]) -> tuple:
    """Sort key for a group's values: numbers in numeric order (depth 2 before 16), then the rest as text."""
    out = []
    for v in values:
        try:
            out.append((0, float(v), ""))
        except (TypeError, ValueError):
            out.append((1, 0.0, str(v)))
    return tuple(out)


def best_of_groups(rows: Iterable[R], group: Callable[[R], tuple[Hashable, ...]], metric: str,
                   mode: str) -> list[tuple[tuple[Hashable, ...], R, int]]:
    """(group values, the group's best row, how many ranked rows the group has) for each group of
    ranked rows, in `group_order` of the values: the comparison a study's table shows."""
    top: dict[tuple, R] = {}
    counts: dict[tuple, int] = defaultdict(int)
    for r in rank(rows, metric, mode):  # best first: the first row seen of a group is its best
        k = group(r)
        counts[k] += 1
        top.setdefault(k, r)
    return [(k, top[k], counts[k]) for k in sorted(top, key=group_order)]


def test_rule(test_once: bool) -> str:
    """When a study's test numbers are computed (Study.test_once), as the parent's description and
    the report say it: selection is on validation, whichever."""
    if test_once:
        return ("test metrics only for the selected trial of each cell, trained again with the search's seed "
                "after the search (tag `tested`)")
    return "test metrics once, after a finished trial's last epoch"


def _check(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def expand_metrics(names: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """A study's table columns with each `prefix/*` replaced by every `prefix/...` metric the rows
    have, in numeric order of the suffix where it is a number (`acc_eps/*`: one column per eps of
    the profile's grid, whichever grid that is)."""
    rows = list(rows)
    out: list[str] = []
    for name in names:
        if not name.endswith("/*"):
            out.append(name)
            continue
        prefix = name[:-1]
        found = {k for r in rows for k in r.get("metrics", {}) if k.startswith(prefix)}
        out += sorted(found, key=lambda k: (_number(k[len(prefix):]), k))
    return out


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf
