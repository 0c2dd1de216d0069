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

