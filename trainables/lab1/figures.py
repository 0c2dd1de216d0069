"""Figures of Lab 1's transfer and CAM studies: heat-map grids (drawn inside a trial) and the
parent-run comparisons (drawn by the driver from the trial rows). Matplotlib, Agg backend."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _image(x: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """(H, W[, 3]) array in [0, 1] and the colour map to draw it with (gray for one channel)."""
    if x.shape[0] == 1:
        return x[0].numpy(), "gray"
    return x.permute(1, 2, 0).numpy(), None


def cam_grid(images: torch.Tensor, maps: torch.Tensor, titles: Sequence[str], title: str) -> Figure:
    """One row per image: input | heat map | overlay. images (N, C, H, W) and maps (N, H, W) in [0, 1]."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6.3, 2.1 * n + 0.4), squeeze=False)
    for row, (x, heat, text) in enumerate(zip(images, maps, titles)):
        img, cmap = _image(x)
        axes[row, 0].imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[row, 0].set_title(text, fontsize=8, loc="left")
        axes[row, 1].imshow(heat.numpy(), cmap="jet", vmin=0, vmax=1)
        axes[row, 2].imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[row, 2].imshow(heat.numpy(), cmap="jet", vmin=0, vmax=1, alpha=0.45)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], ("", "heat map", "overlay")):
        if name:
            ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _best_by(rows: Iterable[Mapping[str, Any]], key: Any, metric: str) -> dict[str, Mapping[str, float]]:
    """For each group, the metrics of the trial with the best `metric` (selection on validation)."""
    best: dict[str, Mapping[str, float]] = {}
    for r in rows:
        group, m = key(r["params"]), r["metrics"]
        if group is not None and metric in m and (group not in best or m[metric] > best[group][metric]):
            best[group] = m
    return best


def _bars(best: Mapping[str, Mapping[str, float]], series: Sequence[tuple[str, str]], title: str,
          ylabel: str, order: Sequence[str] = ()) -> Figure | None:
    if not best:
        return None
    groups = sorted(best, key=lambda g: (list(order).index(g) if g in order else len(order), g))
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 2.5, 3.8))
    width = 0.8 / len(series)
    for i, (metric, label) in enumerate(series):
        values = [best[g].get(metric, np.nan) for g in groups]
        pos = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(pos, values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(groups)), groups, rotation=15)
    top = max((best[g].get(m, 0.0) for g in groups for m, _ in series), default=1.0)
    ax.set_ylim(0, 1.25 * top if top > 0 else 1.0)  # headroom: the legend sits above the bars
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", ncol=len(series))
    fig.tight_layout()
    return fig


def transfer_comparison(rows: list[dict]) -> Figure | None:
    """Per variant, the trial chosen on validation accuracy: its val and (once-reported) test accuracy."""
    best = _best_by(rows, lambda p: p.get("variant"), "val_acc")
    return _bars(best, [("val_acc", "validation (selection)"), ("test_acc", "test")],
                 "transfer variants, best trial of each", "accuracy",
                 order=("linear-svc", "knn", "head", "finetune", "scratch"))


def cam_comparison(rows: list[dict]) -> Figure | None:
    """Per method (and layer), the probability drop when its most salient pixels are removed, vs random."""
    def key(p: Mapping[str, Any]) -> str | None:
        method = p.get("method")
        return None if method is None else method if method == "cam" else f"{method}/{p.get('layer', 'last')}"

    best = _best_by(rows, key, "val_faithfulness")
    series = [("val_drop/salient", "most salient pixels removed"), ("val_drop/random", "random pixels removed")]
    return _bars(best, series, "faithfulness of the heat maps (validation)",
                 "drop of the predicted class' probability")



# ------------------------------------------------------------ residual studies: depth x residual
def _norms(metrics: Mapping[str, Any]) -> list[float]:
    return [float(metrics[k]) for k in sorted(k for k in metrics if k.startswith("grad_norm/"))]


def _best_at(rows: Sequence[Mapping[str, Any]], depth: Any, residual: bool, metric: str) -> Mapping[str, Any] | None:
    """The best trial of one cell that logged gradient norms (each epoch's `grad_norm/NN`)."""
    cell = [r for r in rows if r["params"].get("depth") == depth and r["params"].get("residual") is residual
            and _norms(r.get("first_epoch", r["metrics"])) and metric in r["metrics"]]
    return max(cell, key=lambda r: r["metrics"][metric], default=None)


def depth_comparison(rows: Sequence[Mapping[str, Any]], metric: str = "val_acc") -> Figure | None:
    """The residual studies' figure: (left) best `metric` vs depth, plain and residual; (right) the
    plain and the residual net's per-layer gradient norms at the deepest depth where both ran, at
    the first epoch (before training has moved the weights far): the plain net's norms fall by
    orders of magnitude towards the input, the residual net's do not. That contrast, not the best
    trial's profile, is what explains the finding. rows: the tracker's trial rows (`params`,
    `metrics`, and `first_epoch`: the first epoch's reported values)."""
    from trainables import plots

    depths = sorted({r["params"]["depth"] for r in rows if "depth" in r["params"]})
    both = [d for d in depths if all(_best_at(rows, d, res, metric) for res in (False, True))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if plots.metric_by(rows, "depth", metric, group="residual", log_x=True, ax=axes[0],
                       title=f"best {metric} vs depth") is None:
        plt.close(fig)
        return None
    ax = axes[1]
    if both:
        deepest = both[-1]
        for residual, colour in ((False, "tab:blue"), (True, "tab:orange")):
            row = _best_at(rows, deepest, residual, metric)
            norms = _norms(row.get("first_epoch", row["metrics"]))
            ax.plot(range(len(norms)), [max(v, 1e-12) for v in norms], marker=".", color=colour,
                    label=f"{'residual' if residual else 'plain'} ({metric} {row['metrics'][metric]:.2f})")
        ax.set_yscale("log")
        ax.set_title(f"gradient norms at depth {deepest}, first epoch")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no depth with both a plain and a residual trial\nthat logged gradient norms",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_title("gradient norms")
    ax.set_xlabel("weight layer (input side first)")
    ax.set_ylabel("gradient L2 norm")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
