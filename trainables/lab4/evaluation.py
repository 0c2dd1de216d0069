"""Lab 4's final evaluations, one per task: each takes the finished model(s) and returns
(metrics, files), files being the trial's figures and the small JSON the parent run plots from.

Attacks run on the first `max_eval` test images; OOD scores on the ID validation/test splits
against the same number of OOD images (first part: validation, for choosing T and eps; rest: test).
Metric names: `auroc/<score>`, `acc_eps/<eps>` (eps with 4 decimals, pixel units), ...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import figures as figs
from .attacks import accuracy_under, fgsm, fgsm_attack, iterative_fgsm, pgd_attack, success_rate
from ..context import Context, figure_bytes, json_bytes
from ..data import ImageData, Split, to_float
from .ood import (classifier_scores, curve_points, evaluate_scores, ood_images, reconstruction_score,
                  score_histogram)

OOD_SEED = 12345  # the same OOD draw for every trial and seed, like the ID validation/test splits


def eps_key(eps: float) -> str:
    return f"{eps:.4f}"


def _subset(split: Split, limit: int) -> Split:
    return split if limit <= 0 else Split(split.x[:limit], split.y[:limit])


def _batched(fn: Any, *tensors: torch.Tensor, size: int = 500) -> tuple[torch.Tensor, ...]:
    """Runs fn over chunks of the tensors and concatenates each of its outputs."""
    parts = [fn(*(t[i:i + size] for t in tensors)) for i in range(0, len(tensors[0]), size)]
    parts = [p if isinstance(p, tuple) else (p,) for p in parts]
    return tuple(torch.cat([p[k] for p in parts]) for k in range(len(parts[0])))


# ---------------------------------------------------------------------------------------- OOD
@dataclass(frozen=True)
class OodImages:
    """uint8 OOD images: `val` (as many as the ID validation split) to choose T and eps, `test` to report."""

    name: str
    val: torch.Tensor
    test: torch.Tensor


def load_ood(cfg: Any, ctx: Context, data: ImageData) -> OodImages:
    n_val, n_test = len(data.val), len(data.test)
    ood = ood_images(cfg.ood_set, dataset=cfg.dataset, id_classes=cfg.classes, n=n_val + n_test, shape=data.shape,
                     data_dir=ctx.data_dir, device=ctx.device, seed=OOD_SEED)
    n_val_ood = min(n_val, len(ood) // 2)
    return OodImages(cfg.ood_set, ood[:n_val_ood], ood[n_val_ood:])


def _score_fn(cfg: Any, model: nn.Module, ae: nn.Module | None) -> Any:
    def score_fn(x: torch.Tensor) -> dict[str, np.ndarray]:
        scores = classifier_scores(model, x, cfg.temperature, cfg.odin_eps)
        if ae is not None:
            scores["ae"] = reconstruction_score(ae, x)
        return scores

    return score_fn


def val_auroc(cfg: Any, model: nn.Module, ae: nn.Module | None, data: ImageData, ood: OodImages) -> dict[str, float]:
    """Validation AUROC of every score, and `val_auroc` of the configured one (the study's target)."""
    metrics, _, _ = evaluate_scores(_score_fn(cfg, model, ae), data.val.x, ood.val)
    out = {f"val_auroc/{s}": m["auroc"] for s, m in metrics.items()}
    if cfg.score in metrics:
        out["val_auroc"] = metrics[cfg.score]["auroc"]
    return out


def ood_evaluation(cfg: Any, model: nn.Module, ae: nn.Module | None, data: ImageData, ood: OodImages
                   ) -> tuple[dict[str, float], dict[str, bytes]]:
    """Every score on the ID test split vs the OOD test images: AUROC, AUPR-in/out, FPR95, and the
    curves and histograms its figures are drawn from (figures.ood_trial_figures, by the driver)."""
    test_metrics, id_s, ood_s = evaluate_scores(_score_fn(cfg, model, ae), data.test.x, ood.test)
    metrics = {f"{k}/{s}": v for s, m in test_metrics.items() for k, v in m.items()}
    curves = {s: {**curve_points(id_s[s], ood_s[s]), **test_metrics[s]} for s in id_s}
    files = {"ood_curves.json": json_bytes({"dataset": cfg.dataset, "ood_set": ood.name, "n_id": len(data.test),
                                            "n_ood": len(ood.test), "temperature": cfg.temperature,
                                            "odin_eps": cfg.odin_eps, "score": cfg.score, "scores": curves,
                                            "histograms": {s: score_histogram(id_s[s], ood_s[s]) for s in id_s}})}
    return metrics, files


# ---------------------------------------------------------------------------------------- FGSM
def fgsm_study(cfg: Any, model: nn.Module, data: ImageData) -> tuple[dict[str, float], dict[str, bytes]]:
    """Accuracy vs eps (single-step), success rate at `epsilon`, and the L-inf budget the
    iterative attack needed (until success, at most `attack_steps` steps of `attack_step`)."""
    test = _subset(data.test, cfg.max_eval)
    accs = [accuracy_under(model, test, fgsm_attack(e)) for e in cfg.eps_grid]
    x, y = to_float(test.x), test.y
    model.eval()
    (x_adv,) = _batched(lambda a, b: fgsm(model, a, b, cfg.epsilon), x, y)
    x_it, linf = _batched(lambda a, b: iterative_fgsm(model, a, b, step=cfg.attack_step, max_steps=cfg.attack_steps),
                          x, y)
    with torch.no_grad():
        pred, pred_adv, pred_it = model(x).argmax(1), model(x_adv).argmax(1), model(x_it).argmax(1)
    right = pred == y  # only images the model got right can be attacked successfully
    needed = linf[right]
    found = torch.isfinite(needed)
    metrics = {f"acc_eps/{eps_key(e)}": a for e, a in zip(cfg.eps_grid, accs)}
    metrics.update({
        "adv_acc": float((pred_adv == y).float().mean()),
        "success_rate": success_rate(model, x, y, x_adv),
        "iter_success_rate": float(found.float().mean()) if len(needed) else 0.0,
        "iter_success_at_eps": float((needed <= cfg.epsilon + 1e-6).float().mean()) if len(needed) else 0.0,
        "mean_linf": float(needed[found].mean()) if found.any() else float("nan"),
        "mean_linf_255": float(needed[found].mean() * 255) if found.any() else float("nan"),
    })
    files = {
        "attack_curve.json": json_bytes({"eps_grid": list(cfg.eps_grid), "acc": accs, "epsilon": cfg.epsilon,
                                         "linf_needed": needed[found].tolist()}),
        "figures/acc_vs_eps.png": figure_bytes(figs.accuracy_vs_eps(cfg.eps_grid, {"FGSM": accs})),
        "figures/fgsm_examples.png": figure_bytes(figs.example_grid(
            x, x_adv, y, pred, pred_adv, f"single-step FGSM, eps = {cfg.epsilon:.4f} ({cfg.epsilon * 255:.1f}/255)")),
        "figures/iterative_examples.png": figure_bytes(figs.example_grid(
            x, x_it, y, pred, pred_it, f"iterative FGSM until success (step {cfg.attack_step:.4f})", linf=linf)),
    }
    return metrics, files


# ---------------------------------------------------------------------------------------- the searched knob, on validation
def val_attack(cfg: Any, model: nn.Module, data: ImageData) -> dict[str, float]:
    """The search target of the attack studies, on (the first `max_eval`) validation images, so that
    it depends on what they search: `fgsm`, single-step success rate at the trial's eps (it is not
    monotone in eps: large steps overshoot); `targeted`, the fraction of images of other classes that
    iterative targeted FGSM moves to the trial's `target` within its budget `epsilon`."""
    model.eval()
    if cfg.task == "fgsm":
        val = _subset(data.val, cfg.max_eval)
        x, y = to_float(val.x), val.y
        (x_adv,) = _batched(lambda a, b: fgsm(model, a, b, cfg.epsilon), x, y)
        return {"val_success_rate": success_rate(model, x, y, x_adv)}
    keep = data.val.y != cfg.target
    val = _subset(Split(data.val.x[keep], data.val.y[keep]), cfg.max_eval)
    x, y = to_float(val.x), val.y
    budget_steps = min(cfg.attack_steps, max(1, int(cfg.epsilon / cfg.attack_step + 1e-6)))
    _, linf = _batched(lambda a, b, t: iterative_fgsm(model, a, b, step=cfg.attack_step, max_steps=budget_steps,
                                                      target=t), x, y, torch.full_like(y, cfg.target))
    return {"val_success_rate": float((linf <= cfg.epsilon + 1e-6).float().mean()) if len(linf) else 0.0}


# ---------------------------------------------------------------------------------------- targeted
def targeted_study(cfg: Any, model: nn.Module, data: ImageData) -> tuple[dict[str, float], dict[str, bytes]]:
    """Iterative targeted FGSM toward `target` on test images of every other class: success rate
    vs L-inf budget (a budget b succeeds where the attack needed <= b), overall and per source."""
    keep = data.test.y != cfg.target
    test = _subset(Split(data.test.x[keep], data.test.y[keep]), cfg.max_eval)
    x, y = to_float(test.x), test.y
    target = torch.full_like(y, cfg.target)
    model.eval()
    x_adv, linf = _batched(lambda a, b, t: iterative_fgsm(model, a, b, step=cfg.attack_step,
                                                          max_steps=cfg.attack_steps, target=t), x, y, target)
    with torch.no_grad():
        pred, pred_adv = model(x).argmax(1), model(x_adv).argmax(1)

    def within(budget: float, mask: torch.Tensor | None = None) -> float:
        sel = linf if mask is None else linf[mask]
        return float((sel <= budget + 1e-6).float().mean()) if len(sel) else float("nan")

    sources = sorted(int(c) for c in y.unique())
    curve = [within(b) for b in cfg.eps_grid]
    by_source = {s: [within(b, y == s) for b in cfg.eps_grid] for s in sources}
    metrics = {"success_rate": within(cfg.epsilon), "success_within_steps": within(float("inf")),
               **{f"success_eps/{eps_key(b)}": v for b, v in zip(cfg.eps_grid, curve)},
               **{f"success_from/{s}": within(cfg.epsilon, y == s) for s in sources}}
    found = torch.isfinite(linf)
    metrics["mean_linf"] = float(linf[found].mean()) if found.any() else float("nan")
    files = {
        "targeted.json": json_bytes({"target": cfg.target, "epsilon": cfg.epsilon, "budgets": list(cfg.eps_grid),
                                     "success": curve, "by_source": {str(s): v for s, v in by_source.items()},
                                     "at_epsilon": {str(s): metrics[f"success_from/{s}"] for s in sources}}),
        "figures/targeted_budget.png": figure_bytes(figs.success_vs_budget(cfg.eps_grid, curve, by_source, cfg.target)),
        "figures/targeted_examples.png": figure_bytes(figs.example_grid(
            x, x_adv, y, pred, pred_adv, f"iterative targeted FGSM toward class {cfg.target}", linf=linf)),
    }
    return metrics, files


# ---------------------------------------------------------------------------------------- adversarial training
def robustness_study(cfg: Any, model: nn.Module, data: ImageData, ood: OodImages
                     ) -> tuple[dict[str, float], dict[str, bytes]]:
    """Clean, FGSM and PGD accuracy at the training eps and over `eps_grid` (test), and the OOD
    metrics of the (robust) classifier's scores."""
    test = _subset(data.test, cfg.max_eval)
    fgsm_accs = [accuracy_under(model, test, fgsm_attack(e)) for e in cfg.eps_grid]
    pgd_accs = [accuracy_under(model, test, pgd_attack(e, cfg.pgd_steps, cfg.seed)) for e in cfg.eps_grid]
    metrics = {"fgsm_acc": accuracy_under(model, test, fgsm_attack(cfg.epsilon)),
               "pgd_acc": accuracy_under(model, test, pgd_attack(cfg.epsilon, cfg.pgd_steps, cfg.seed))}
    metrics.update({f"fgsm_acc_eps/{eps_key(e)}": a for e, a in zip(cfg.eps_grid, fgsm_accs)})
    metrics.update({f"pgd_acc_eps/{eps_key(e)}": a for e, a in zip(cfg.eps_grid, pgd_accs)})
    ood_metrics, ood_files = ood_evaluation(cfg, model, None, data, ood)
    metrics.update(ood_metrics)
    files = {**ood_files,
             "robustness.json": json_bytes({"eps_grid": list(cfg.eps_grid), "fgsm": fgsm_accs, "pgd": pgd_accs,
                                            "epsilon": cfg.epsilon, "mix": cfg.mix}),
             "figures/robust_acc_vs_eps.png": figure_bytes(figs.accuracy_vs_eps(
                 cfg.eps_grid, {"FGSM": fgsm_accs, f"PGD-{cfg.pgd_steps}": pgd_accs},
                 f"trained with eps = {cfg.epsilon:.4f}, mix = {cfg.mix:g}", mark=cfg.epsilon))}
    return metrics, files
