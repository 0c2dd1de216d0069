"""Figures drawn from metrics (no model needed): training curves, gradient norms, study comparisons.

Pure matplotlib (Agg backend, no display). Each function returns a Figure; callers save or log it.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

History = Sequence[Mapping[str, Any]]


def curves(history: History) -> Figure | None:
    """Loss and accuracy per epoch, train vs validation."""
    epochs = [h["epoch"] for h in history if "epoch" in h]
    if len(epochs) < 2:  # a one-shot trial (e.g. a fitted classifier) has no curve to show
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, what in zip(axes, ("loss", "acc")):
        for split in ("train", "val"):
            ys = [h.get(f"{split}_{what}") for h in history if "epoch" in h]
            if any(y is not None for y in ys):
                ax.plot(epochs, ys, marker="o", ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    # Fixed margins, not tight_layout: these two figures are drawn for every trial (cost measured in
    # benchmarks/logging_cost.py), and their labels never change length.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.95, wspace=0.25)
    return fig


def grad_norms(history: History) -> Figure | None:
    """Per-layer gradient norm (log scale), input layer on the left, one line per epoch: in a plain
    deep net the early layers' norms collapse towards zero, in a residual one they do not."""
    rows = [h for h in history if any(k.startswith("grad_norm/") for k in h)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    cmap = plt.get_cmap("viridis")
    for i, h in enumerate(rows):
        keys = sorted(k for k in h if k.startswith("grad_norm/"))
        ax.plot(range(len(keys)), [max(h[k], 1e-12) for k in keys], color=cmap(i / max(len(rows) - 1, 1)),
                label=f"epoch {h.get('epoch', i + 1)}" if i in (0, len(rows) - 1) else None)
    ax.set_yscale("log")
    ax.set_xlabel("weight layer (input side first)")
    ax.set_ylabel("gradient L2 norm")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.14, top=0.95)
    return fig


def trial_figures(history: History) -> dict[str, Figure]:
    figs = {"curves.png": curves(history), "grad_norms.png": grad_norms(history)}
    return {name: fig for name, fig in figs.items() if fig is not None}


def metric_by(rows: Iterable[Mapping[str, Any]], x: str, metric: str, group: str | None = None,
              title: str = "", log_x: bool = False, ax: Any = None) -> Figure | None:
    """Best `metric` for each value of param `x`, one line per value of param `group`.
    rows: {'params': {...}, 'metrics': {...}} per trial. Draws on `ax` when given (a panel of a
    larger figure), else on a new figure."""
    best: dict[Any, dict[Any, float]] = defaultdict(dict)
    for r in rows:
        p, m = r["params"], r["metrics"]
        if x not in p or metric not in m:
            continue
        g = p.get(group) if group else metric
        best[g][p[x]] = max(best[g].get(p[x], float("-inf")), m[metric])
    if not best:
        return None
    own = ax is None
    fig, ax = plt.subplots(figsize=(6, 3.8)) if own else (ax.figure, ax)
    for g, points in sorted(best.items(), key=lambda kv: str(kv[0])):
        xs = sorted(points)
        ax.plot(xs, [points[v] for v in xs], marker="o", label=f"{group}={g}" if group else metric)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel(f"best {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if own:
        fig.tight_layout()
    return fig
