"""Lab 4 figures: trial figures from arrays (scores, accuracies, images) and the parent-run
comparisons drawn from the trial rows (their metrics, params and small JSON files).

Pure matplotlib (Agg). Each function returns a Figure (or None when there is nothing to draw).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

Rows = Sequence[Mapping[str, Any]]


# ---------------------------------------------------------------------------------------- trial figures
def score_histograms(histograms: Mapping[str, Mapping[str, Sequence[float]]], ood_set: str, title: str = "") -> Figure:
    """One panel per score: ID vs OOD densities (ood.score_histogram; higher = more in-distribution).
    Densities have no common scale across panels, so no y ticks; one legend for all panels."""
    names = list(histograms)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows + 0.5), squeeze=False)
    for ax, name in zip(axes.flat, names):
        h = histograms[name]
        # stairs: one patch per series (ax.hist draws a bar per bin, ~5x the drawing time)
        for key, label in (("id", "ID"), ("ood", f"OOD ({ood_set})")):
            ax.stairs(h[key], h["edges"], fill=True, alpha=0.6, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8)
    if title:
        fig.suptitle(title)
    # fixed margins: tight_layout measures every text and was a fifth of the drawing time
    fig.subplots_adjust(left=0.03, right=0.98, bottom=0.16 if rows == 1 else 0.1, top=0.84 if rows == 1 else 0.9,
                        wspace=0.12, hspace=0.45)
    return fig


def roc_pr(curves: Mapping[str, Mapping[str, Any]], title: str = "") -> Figure:
    """ROC and precision-recall (ID positive) curves of every score, AUROC in the legend."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4))
    for name, c in curves.items():
        roc.plot(c["fpr"], c["tpr"], label=f"{name} (AUROC {c['auroc']:.3f})")
        pr.plot(c["recall"], c["precision"], label=f"{name} (AUPR-in {c['aupr_in']:.3f})")
    roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc.set(xlabel="false positive rate (OOD accepted)", ylabel="true positive rate (ID kept)", title="ROC")
    pr.set(xlabel="recall (ID)", ylabel="precision (ID)", title="precision-recall, ID positive")
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84, wspace=0.25)
    return fig


def ood_trial_figures(files: Mapping[str, Any]) -> dict[str, Figure]:
    """A trial's OOD figures, drawn from its `ood_curves.json` (evaluation.ood_evaluation) by the
    driver when it logs the trial: the trial's time goes to scoring, not to matplotlib."""
    curves = files.get("ood_curves.json")
    if not isinstance(curves, Mapping) or "scores" not in curves:
        return {}
    ood_set = curves.get("ood_set", "")
    pair = f"ID {curves.get('dataset', '')} vs OOD {ood_set}"
    figs = {"ood_roc_pr.png": roc_pr(curves["scores"], pair)}
    if curves.get("histograms"):
        figs["ood_histograms.png"] = score_histograms(curves["histograms"], ood_set, f"score densities, {pair}")
    return figs


def accuracy_vs_eps(eps_grid: Sequence[float], series: Mapping[str, Sequence[float]], title: str = "",
                    mark: float | None = None) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, accs in series.items():
        ax.plot([e * 255 for e in eps_grid], accs, marker="o", label=label)
    if mark is not None:
        ax.axvline(mark * 255, color="gray", ls="--", lw=0.8, label="training eps")
    ax.set(xlabel="eps (x 1/255, L-inf, pixel scale)", ylabel="test accuracy", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _tile(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) for a mosaic (grey images repeated to RGB)."""
    img = img.detach().cpu().float().clamp(0, 1)
    return (img.expand(3, -1, -1) if img.shape[0] == 1 else img).permute(1, 2, 0).numpy()


def example_grid(x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, pred_adv: torch.Tensor,
                 title: str, linf: torch.Tensor | None = None, n: int = 8) -> Figure:
    """Rows: original, perturbation amplified to the full grey range (mid-grey = 0), adversarial;
    under each column: label, clean and adversarial prediction, the perturbation's L-inf size.
    Images the model got right come first. One mosaic on one axes: cheap to draw."""
    order = torch.argsort((pred != y).int(), stable=True)[:n].tolist()
    h, w = x.shape[2], x.shape[3]
    pad = max(1, h // 8)
    mosaic = np.ones((3 * (h + pad) - pad, len(order) * (w + pad) - pad, 3))
    labels = []
    for col, i in enumerate(order):
        delta = x_adv[i] - x[i]
        size = float(delta.abs().max())
        rows = (x[i], delta / (2 * size) + 0.5 if size > 0 else delta + 0.5, x_adv[i])
        for row, img in enumerate(rows):
            mosaic[row * (h + pad):row * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = _tile(img)
        budget = float(linf[i]) if linf is not None else size
        shown = f"{budget * 255:.1f}/255" if np.isfinite(budget) else "not found"
        labels.append(f"y={int(y[i])} pred={int(pred[i])}\nadv pred={int(pred_adv[i])}\n|d|inf={shown}")
    fig, ax = plt.subplots(figsize=(1.3 * len(order) + 1.2, 4.6))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([c * (w + pad) + w / 2 - 0.5 for c in range(len(order))], labels, fontsize=7)
    ax.set_yticks([r * (h + pad) + h / 2 - 0.5 for r in range(3)],
                  ["original", "perturbation\n(amplified)", "adversarial"])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    return fig


def success_vs_budget(budgets: Sequence[float], overall: Sequence[float], by_source: Mapping[int, Sequence[float]],
                      target: int) -> Figure:
    fig, ax = plt.subplots(figsize=(5.8, 3.8))
    xs = [b * 255 for b in budgets]
    for source, curve in by_source.items():
        ax.plot(xs, curve, lw=0.8, alpha=0.6, label=f"from {source}")
    ax.plot(xs, overall, "k-o", lw=2, label="all sources")
    ax.set(xlabel="L-inf budget (x 1/255)", ylabel=f"success rate (-> class {target})", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------- parent-run comparisons
def _series(metrics: Mapping[str, float], prefix: str) -> tuple[list[float], list[float]]:
    points = sorted((float(k[len(prefix):]), v) for k, v in metrics.items() if k.startswith(prefix))
    return [p[0] for p in points], [p[1] for p in points]


def _selected(rows: Rows, metric: str) -> Mapping[str, Any]:
    """The best row on `metric`, ties to the lower trial id (the orchestrator's ranking)."""
    return min(rows, key=lambda r: (-r["metrics"][metric], str(r.get("trial_id", ""))))


def _knob(row: Mapping[str, Any], name: str) -> Any:
    """A trial's value of `name`: sampled, else as its test curves record it (pinned), else NaN."""
    if name in row.get("params", {}):
        return row["params"][name]
    return row.get("files", {}).get("ood_curves.json", {}).get(name, np.nan)


def ood_compare(rows: Rows) -> Figure | None:
    """Left: test AUROC of every score (rows) against every OOD set (columns), each set's trial
    selected on validation AUROC: the lab's scores x sets table at a glance.
    Right: validation AUROC of the searched score vs temperature, one marker per OOD set, coloured
    by ODIN's eps (the search inside each set): every trial, also those never tested (test once:
    only a tested trial has the test curves, `ood_curves.json`)."""
    scored = [r for r in rows if "val_auroc" in r["metrics"] and "ood_curves.json" in r.get("files", {})]
    if not scored:
        return None
    searched: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if "val_auroc" in r["metrics"]:
            searched.setdefault(str(_knob(r, "ood_set")), []).append(r)
    by_set: dict[str, list[Mapping[str, Any]]] = {}
    for r in scored:
        by_set.setdefault(str(r["files"]["ood_curves.json"]["ood_set"]), []).append(r)
    sets = sorted(by_set)
    best = {s: _selected(by_set[s], "val_auroc")["files"]["ood_curves.json"] for s in sets}
    names = list(dict.fromkeys(n for s in sets for n in best[s]["scores"]))
    auroc = np.array([[best[s]["scores"].get(n, {}).get("auroc", np.nan) for s in sets] for n in names])
    fig, (heat, search) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 2.6),
                                       gridspec_kw={"width_ratios": (max(2, len(sets)), 4)})
    image = heat.imshow(auroc, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(auroc):
        if np.isfinite(v):
            heat.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if v < 0.8 else "black")
    heat.set(xticks=range(len(sets)), xticklabels=sets, yticks=range(len(names)), yticklabels=names,
             xlabel="OOD set", title="test AUROC (each set's selected trial)")
    fig.colorbar(image, ax=heat, fraction=0.08)
    markers = "osD^v<>"
    for k, s in enumerate(sorted(searched)):
        points = search.scatter([_knob(r, "temperature") for r in searched[s]],
                                [r["metrics"]["val_auroc"] for r in searched[s]],
                                c=[_knob(r, "odin_eps") for r in searched[s]], cmap="viridis", vmin=0.0, vmax=0.004,
                                marker=markers[k % len(markers)], edgecolors="k", linewidths=0.4, label=s)
    fig.colorbar(points, ax=search, label="odin_eps (pixel units)")
    search.set(xscale="log", xlabel="temperature", ylabel=f"validation AUROC ({best[sets[0]].get('score', '?')})",
               title="ODIN search within each OOD set")
    search.legend(fontsize=7, title="OOD set", title_fontsize=7)
    search.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _label(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def fgsm_compare(rows: Rows) -> Figure | None:
    """Test accuracy vs FGSM eps, one line per trial; and the iterative attack's mean L-inf budget."""
    rows = [r for r in rows if any(k.startswith("acc_eps/") for k in r["metrics"])]
    if not rows:
        return None
    fig, (acc, budget) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        xs, ys = _series(r["metrics"], "acc_eps/")
        acc.plot([x * 255 for x in xs], ys, marker="o", label=_label(r["params"]))
    acc.set(xlabel="eps (x 1/255)", ylabel="test accuracy under FGSM", ylim=(0, 1.02), title="accuracy vs eps")
    acc.legend(fontsize=6)
    acc.grid(alpha=0.3)
    names = [f"{r['trial_id']}\n{_label(r['params'])}" for r in rows]
    budget.bar(names, [r["metrics"].get("mean_linf_255", np.nan) for r in rows])
    budget.set(ylabel="mean L-inf needed (x 1/255)", title="iterative FGSM until success")
    budget.tick_params(axis="x", rotation=45, labelsize=6)
    fig.tight_layout()
    return fig


def adv_train_compare(rows: Rows) -> Figure | None:
    """Robustness vs OOD detection over the training eps: PGD accuracy and OOD AUROC (msp) per trial,
    and the two against each other. Trials stopped for catastrophic overfitting are crosses."""
    rows = [r for r in rows if "pgd_acc" in r["metrics"] and "auroc/msp" in r["metrics"]]
    if not rows:
        return None
    eps = np.array([r["params"].get("epsilon", np.nan) for r in rows]) * 255
    robust = [r["metrics"].get("val_robust_acc", np.nan) for r in rows]
    auroc = [r["metrics"]["auroc/msp"] for r in rows]
    co = np.array([r["metrics"].get("catastrophic_overfit", 0) > 0 for r in rows])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.scatter(eps, robust, marker="o", label="PGD accuracy at eval_eps (val)")
    left.scatter(eps, auroc, marker="s", label="OOD AUROC (msp)")
    left.set(xlabel="training eps (x 1/255)", ylabel="value", title="robustness and OOD detection vs eps")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    points = right.scatter(np.array(auroc)[~co], np.array(robust)[~co], c=eps[~co], cmap="viridis",
                           vmin=np.nanmin(eps), vmax=np.nanmax(eps))
    if co.any():
        right.scatter(np.array(auroc)[co], np.array(robust)[co], c="red", marker="x", label="catastrophic overfit")
        right.legend(fontsize=7)
    fig.colorbar(points, ax=right, label="training eps (x 1/255)")
    right.set(xlabel="OOD AUROC (msp)", ylabel="robust accuracy (PGD at eval_eps, val)", title="trade-off")
    right.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def targeted_compare(rows: Rows) -> Figure | None:
    """Success vs budget, one line per target class; and the source -> target success matrix at
    the grid budget where the mean success over trials is closest to 1/2 (the most telling one)."""
    rows = [r for r in rows if "targeted.json" in r.get("files", {})]
    if not rows:
        return None
    fig, (curves, matrix) = plt.subplots(1, 2, figsize=(11, 4.2))
    budgets = rows[0]["files"]["targeted.json"]["budgets"]
    mean_success = np.nanmean([r["files"]["targeted.json"]["success"] for r in rows], axis=0)
    at = int(np.argmin(np.abs(mean_success - 0.5)))
    sources = sorted({int(s) for r in rows for s in r["files"]["targeted.json"]["by_source"]})
    n = max(sources + [int(r["files"]["targeted.json"]["target"]) for r in rows]) + 1
    table = np.full((n, n), np.nan)
    for r in sorted(rows, key=lambda r: r["files"]["targeted.json"]["target"]):
        info = r["files"]["targeted.json"]
        curves.plot([b * 255 for b in info["budgets"]], info["success"], marker="o",
                    label=f"target {info['target']} ({r['trial_id']})")
        for s, curve in info["by_source"].items():
            table[int(s), int(info["target"])] = curve[at] if at < len(curve) else np.nan
    curves.set(xlabel="L-inf budget (x 1/255)", ylabel="targeted success rate", ylim=(0, 1.02),
               title="success vs budget per target")
    curves.legend(fontsize=6)
    curves.grid(alpha=0.3)
    im = matrix.imshow(table, vmin=0, vmax=1, cmap="magma")
    fig.colorbar(im, ax=matrix, label="success rate")
    matrix.set(xlabel="target class", ylabel="source class", xticks=range(n), yticks=range(n),
               title=f"source -> target at budget {budgets[at] * 255:.1f}/255")
    fig.tight_layout()
    return fig
