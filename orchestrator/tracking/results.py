"""What a trial's results become in MLflow. The trainables report their science unchanged (per epoch:
`lr`, `grad_norm/NN`, `world_size`, ...); this module decides the names a user reads.

- Results first: every epoch logs `best_<metric>` and `best_<metric>_epoch` (the study's selection
  metric at its best epoch so far, `orchestrator.ranking`'s meaning of best: the last value is the
  trial's), a trial that ends gets `final_<name>` for each `train_*`/`val_*` curve (its last epoch),
  and `test_*` come once, as reported. MLflow's charts, compare page and column pickers sort metric
  names, so `best_`, `final_` and `test_` come first, ahead of the per-epoch curves (`train_*`, `val_*`).
- Per-layer gradient norms (`grad_norm/NN`, one per weight layer, layer 00 at the input) are not
  logged one metric per layer: each epoch logs three summaries, `train_grad_norm_first` (the input
  layer), `train_grad_norm_last` (the head) and `train_grad_norm_ratio` (first / last: far below 1
  when gradients vanish towards the input), and the trial's figure `figures/grad_norms.png` and table
  `tables/grad_norms.json` hold every layer.
- The schedule's current learning rate (`lr` as reported, the rate after the epoch's last step) is
  logged as `train_lr_end`: the param `lr` is the initial rate.
- Bookkeeping (world size, weights digest, Ray Train's worker count and replica check, the node) is
  tagged on the run, not logged as metrics; `epoch` is the step of every metric, not a metric.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..ranking import best_key, best_value

GRAD_PREFIX = "grad_norm/"
RENAMED = {"lr": "train_lr_end"}
GRAD_SUMMARIES = ("train_grad_norm_first", "train_grad_norm_last", "train_grad_norm_ratio")
BOOKKEEPING = ("world_size", "weights_digest", "workers_reported", "replicas_in_sync", "node_id")
NOT_LOGGED = {"epoch"}
CURVE_PREFIXES = ("train_", "val_")
DERIVED = {*RENAMED.values(), *GRAD_SUMMARIES}  # logged names that are not curves of the science


def grad_norms(metrics: Mapping[str, Any]) -> list[float]:
    """The per-layer gradient norms of one result, input layer first (empty if it has none)."""
    return [float(metrics[k]) for k in sorted(k for k in metrics if k.startswith(GRAD_PREFIX))]


def to_log(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics to log for one reported result (numeric, finite, Tune's keys already removed)."""
    out = {RENAMED.get(k, k): v for k, v in metrics.items()
           if not k.startswith(GRAD_PREFIX) and k not in BOOKKEEPING and k not in NOT_LOGGED}
    norms = grad_norms(metrics)
    if norms:
        out[GRAD_SUMMARIES[0]], out[GRAD_SUMMARIES[1]] = norms[0], norms[-1]
        if norms[-1] > 0:
            out[GRAD_SUMMARIES[2]] = norms[0] / norms[-1]
    return out


def bookkeeping(result: Mapping[str, Any]) -> dict[str, str]:
    """The result's bookkeeping values, as tags."""
    return {k: _tag_value(result[k]) for k in BOOKKEEPING if k in result and result[k] is not None}


def _tag_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def epoch_of(entry: Mapping[str, Any], index: int) -> int:
    """The epoch of the index-th reported result (1-based when the trainable reports none)."""
    return int(entry.get("epoch", index + 1))


def best_so_far(history: Sequence[Mapping[str, float]], metric: str, mode: str) -> dict[str, float]:
    """`best_<metric>` and `best_<metric>_epoch` (the first epoch that reached it) over `history`;
    empty when the metric was never reported. Logged every epoch (the trial's best so far), first in
    the batch: MLflow's run page and compare page list a run's metrics in the order they first came.

    A history adopted from MLflow on --resume is one entry of logged values, which already hold
    `best_<metric>`; it is kept as it is."""
    key = best_key(metric)
    values = [(h[key] if key in h else h.get(metric), h.get(f"{key}_epoch", epoch_of(h, i)))
              for i, h in enumerate(history)]
    values = [(v, e) for v, e in values if v is not None and math.isfinite(float(v))]
    if not values:
        return {}
    top = best_value([v for v, _ in values], mode)
    return {key: top, f"{key}_epoch": float(next(e for v, e in values if float(v) == top))}


def finals(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """`final_<name>` of each train_/val_ curve (its last epoch), when the trial reported more than one."""
    if len(history) < 2:
        return {}
    return {f"final_{k}": float(v) for k, v in history[-1].items()
            if k.startswith(CURVE_PREFIXES) and not k.startswith(GRAD_PREFIX) and k not in DERIVED}


def summary(history: Sequence[Mapping[str, float]], metric: str, mode: str) -> dict[str, float]:
    """A trial's results: its best so far (`best_so_far`) and its final values (`finals`)."""
    return {**best_so_far(history, metric, mode), **finals(history)}


def grad_table(history: Sequence[Mapping[str, float]]) -> dict[str, list[float]] | None:
    """Every layer's gradient norm at every epoch: one row per weight layer (0 at the input), one
    column per epoch (`epoch_3`); None when the trial logged none."""
    rows = [(epoch_of(h, i), grad_norms(h)) for i, h in enumerate(history)]
    rows = [(e, n) for e, n in rows if n]
    if not rows:
        return None
    layers = max(len(n) for _, n in rows)
    table: dict[str, list[Any]] = {"layer": list(range(layers))}
    for epoch, norms in rows:
        table[f"epoch_{epoch}"] = [norms[i] if i < len(norms) else None for i in range(layers)]
    return table
