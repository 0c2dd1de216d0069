"""A study's expected finding, stated as data and judged on its trials: `holds`, `does not hold` or
`inconclusive`, with the effect and its 95% interval, so a report shows what the lab claims and
whether the runs back it (a claim that fails is printed as failing, not hidden).

The effect is always mean(treatment) − mean(control) of the finding's metric, over the trials whose
factor is at that level and whose other factors match `at`. Its 95% interval is Welch's t interval
(unequal variances, Welch–Satterthwaite degrees of freedom): seeds of two cells need not spread alike.
The claim is `effect > margin` when the metric is maximised (mode "max") and `effect < −margin` when it
is minimised (mode "min"); with o = the effect oriented so that larger is better (−effect for "min"):

- holds:          the interval of o lies above the margin (low > margin);
- does not hold:  it lies below the margin (high < margin): the claim is excluded;
- inconclusive:   it contains the margin, or a side has fewer than 2 samples (no interval can be
                  drawn, whatever the point estimate), or no cell has samples of both levels.

Samples with zero variance on both sides collapse the interval to the point. `at` fixes the other
factors; the value DEEPEST ("max") or SHALLOWEST ("min") stands for that factor's largest / smallest
value among the cells that have samples of BOTH levels (given the fixed values, and the extremes
resolved before it in `at`'s order), so a deeper depth that only the treatment reached is not picked.
Values compare with ==, except that a bool matches only a bool: True == 1 in Python, but a level
`residual=True` must not count a row `residual=1` (nor `residual=False` a row with 0).

Rows are flat dicts ({"depth": 32, "residual": True, "val_acc": 0.93}) or records read back from
MLflow (metric under "metrics"; params under "sampled", which is typed, then "params", which MLflow
stores as strings, so they match only string levels). A row without a finite value of the metric is
ignored, as is one whose `status` says its run did not finish (orchestrator.ranking.finished).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from numbers import Real
from typing import Any, Iterable, Mapping, Sequence

from .ranking import finished
from .study import DEEPEST, SHALLOWEST, Finding, same

__all__ = ["DEEPEST", "SHALLOWEST", "Finding", "Verdict", "judge", "judge_all", "mean_interval", "same",
           "welch_interval"]


LABELS = ("holds", "does not hold", "inconclusive")
REPEATS_HINT = "run --repeats K for an interval"


@dataclass(frozen=True)
class Verdict:
    """A finding judged on its rows: the effect, its interval (None without 2 samples a side), the label."""
    finding: Finding
    at: dict[str, Any]
    effect: float | None
    low: float | None
    high: float | None
    n_treatment: int
    n_control: int
    label: str
    reason: str = ""

    def line(self) -> str:
        """The report's one line: `residual − plain val_acc at depth=32: +0.860 [+0.840, +0.880] (5 vs 5 seeds): holds`."""
        t, c = self.finding.names()
        where = f" at {', '.join(f'{k}={v}' for k, v in self.at.items())}" if self.at else ""
        if self.effect is None:
            value = "no samples"
        else:
            interval = f" [{self.low:+.3f}, {self.high:+.3f}]" if self.low is not None else ""
            value = f"{self.effect:+.3f}{interval} ({self.n_treatment} vs {self.n_control} seeds)"
        why = f" ({self.reason})" if self.reason else ""
        return f"{t} − {c} {self.finding.metric}{where}: {value}: {self.label}{why}"


def _get(row: Mapping[str, Any], key: str, *nested: str) -> Any:
    """`row[key]`, else the first of `row[n][key]` for the nested mappings `n`; None when absent."""
    if key in row:
        return row[key]
    return next((row[n][key] for n in nested if isinstance(row.get(n), Mapping) and key in row[n]), None)


def _param(row: Mapping[str, Any], key: str) -> Any:
    return _get(row, key, "sampled", "params")


def _value(row: Mapping[str, Any], metric: str) -> float | None:
    v = _get(row, metric, "metrics")
    if isinstance(v, bool) or not isinstance(v, Real):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _samples(f: Finding, rows: Sequence[Mapping[str, Any]], at: Mapping[str, Any], level: Any) -> list[float]:
    """The metric values of the rows at `level` of the factor that match every fixed value of `at`."""
    matching = (r for r in rows if same(_param(r, f.factor), level) and all(same(_param(r, k), v) for k, v in at.items()))
    return [v for v in (_value(r, f.metric) for r in matching) if v is not None]


def _distinct(values: Iterable[Any]) -> list[Any]:
    """The distinct non-None values, by `same` (a set would merge True and 1)."""
    out: list[Any] = []
    for v in values:
        if v is not None and not any(same(v, o) for o in out):
            out.append(v)
    return out


def _resolve(f: Finding, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """`at` with DEEPEST/SHALLOWEST replaced by values; None when no cell has both levels."""
    fixed = {k: v for k, v in f.at.items() if v not in (DEEPEST, SHALLOWEST)}
    resolved: dict[str, Any] = {}
    for key, want in f.at.items():
        if key in fixed:
            resolved[key] = want
            continue
        known = {**resolved, **fixed}
        values = _distinct(_param(r, key) for r in rows)
        both = [v for v in values if all(_samples(f, rows, {**known, key: v}, lv) for lv in (f.treatment, f.control))]
        if not both:
            return None
        resolved[key] = max(both) if want == DEEPEST else min(both)
    return resolved


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The `level` t interval of the mean of `values` (one cell's seeds); None below 2 values."""
    if len(values) < 2:
        return None
    from scipy.stats import t as student_t  # here: the catalogs (imported by every trial) import this module

    mean, se = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = float(student_t.ppf(0.5 + level / 2, len(values) - 1)) * se
    return mean - half, mean + half


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The `level` interval of mean(a) − mean(b), Welch's t (both sides need 2 samples)."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return diff, diff
    w = va / (va + vb)  # Welch–Satterthwaite, written in shares so tiny variances do not underflow to 0/0
    dof = 1.0 / (w ** 2 / (len(a) - 1) + (1.0 - w) ** 2 / (len(b) - 1))
    from scipy.stats import t as student_t  # here: the catalogs (imported by every trial) import this module

    half = float(student_t.ppf(0.5 + level / 2, dof)) * se
    return diff - half, diff + half


def judge(finding: Finding, rows: Sequence[Mapping[str, Any]]) -> Verdict:
    """The finding judged on trial rows by the module docstring's rule."""
    rows = [r for r in rows if finished(r)]
    at = _resolve(finding, rows)
    t, c = ([], []) if at is None else (_samples(finding, rows, at, lv) for lv in (finding.treatment, finding.control))
    shown, n = (dict(finding.at) if at is None else at), (len(t), len(c))
    if not t or not c:
        return Verdict(finding, shown, None, None, None, *n, "inconclusive", "no cell with both levels ran")
    effect = statistics.fmean(t) - statistics.fmean(c)
    if min(n) < 2:
        few = "1 seed per side" if n == (1, 1) else "under 2 seeds on a side"
        return Verdict(finding, shown, effect, None, None, *n, "inconclusive", f"{few}: {REPEATS_HINT}")
    low, high = welch_interval(t, c)
    o_low, o_high = (low, high) if finding.mode == "max" else (-high, -low)
    label = "holds" if o_low > finding.margin else "does not hold" if o_high < finding.margin else "inconclusive"
    reason = f"the 95% interval contains the margin {finding.margin:g}" if label == "inconclusive" else ""
    return Verdict(finding, shown, effect, low, high, *n, label, reason)


def judge_all(findings: Sequence[Finding], rows: Sequence[Mapping[str, Any]]) -> list[Verdict]:
    """Every finding judged on the same rows, in the findings' order."""
    return [judge(f, rows) for f in findings]
