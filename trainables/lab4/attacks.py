"""Adversarial attacks in pixel space [0, 1] (normalisation lives inside the model).

Every epsilon here is an L-inf radius in pixel units of [0, 1]: the usual "eps = 8/255" is 0.0314,
one grey level of an 8-bit image is 1/255 = 0.0039. All attacks clip to [0, 1], so an adversarial
image is still a valid image, and take gradients with respect to the input only (the model's
parameter gradients are left untouched, so attacks can run in the middle of a training step).

- `fgsm`: x' = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1); targeted: step *down* the loss of
  the target class instead (Goodfellow et al. 2015).
- `iterative_fgsm`: repeated FGSM steps of `step` until each image is misclassified (or classified
  as the target), within a step budget; returns the L-inf distance each image needed.
- `pgd`: projected gradient descent with random start (Madry et al. 2018), the evaluation attack.
- `fgsm_rs`: FGSM with random start, step 1.25 * eps (Wong, Rice & Kolter 2020), for training.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Split, to_float

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(model(x), y) / dx, summed over the batch (each image's gradient is its own). Works
    inside `torch.no_grad()` blocks too: the attack needs its gradient whatever the caller's mode."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, targeted: bool = False) -> torch.Tensor:
    """One signed-gradient step of size eps: up the loss of `y`, or (targeted) down the loss of
    the target classes `y`. eps = 0 returns x unchanged."""
    if eps == 0:
        return x.detach().clone()
    direction = -1.0 if targeted else 1.0
    return (x + direction * eps * input_grad(model, x, y).sign()).clamp(0, 1).detach()


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Back into the L-inf ball of radius eps around x and into the image range [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
        alpha: float | None = None, random_start: bool = True, seed: int = 0) -> torch.Tensor:
    """L-inf PGD: `steps` FGSM steps of `alpha` (default 2.5 * eps / steps, Madry et al.), each
    projected back into the eps-ball, from a uniform random start inside it."""
    if eps == 0:
        return x.detach().clone()
    alpha = 2.5 * eps / steps if alpha is None else alpha
    x_adv = x.detach()
    if random_start:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        noise = torch.rand(x.shape, device=x.device, generator=gen) * 2 - 1
        x_adv = (x + eps * noise).clamp(0, 1)
    for _ in range(steps):
        x_adv = project(x_adv + alpha * input_grad(model, x_adv, y).sign(), x, eps).detach()
    return x_adv


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, alpha_ratio: float = 1.25,
            random_start: bool = True, gen: torch.Generator | None = None) -> torch.Tensor:
    """"Fast is better than free" FGSM: uniform start in the eps-ball, one step of alpha_ratio * eps,
    projected back. The random start is what keeps single-step training from overfitting to FGSM;
    without it (and alpha_ratio = 1) this is plain FGSM training, prone to catastrophic overfitting."""
    if eps == 0:
        return x.detach().clone()
    start = x.detach()
    if random_start:
        noise = torch.rand(x.shape, device=x.device, generator=gen) * 2 - 1
        start = (x + eps * noise).clamp(0, 1)
    return project(start + alpha_ratio * eps * input_grad(model, start, y).sign(), x, eps).detach()


def iterative_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: float, max_steps: int,
                   target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FGSM steps of size `step` until each image is misclassified (untargeted) or classified as
    `target` (targeted), at most `max_steps` steps. Images stop moving once they succeed.

    Returns (x_adv, linf): linf is each image's L-inf distance ||x_adv - x||_inf at success (0 for
    an image that already succeeds unperturbed) and +inf where the step budget ran out."""
    labels = y if target is None else target
    x = x.detach()
    x_adv = x.clone()
    linf = torch.full((len(x),), float("inf"), device=x.device)
    for i in range(max_steps + 1):
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
        done = (pred != y) if target is None else (pred == target)
        newly = done & torch.isinf(linf)
        linf[newly] = (x_adv[newly] - x[newly]).flatten(1).abs().amax(1)
        active = torch.isinf(linf)
        if i == max_steps or not active.any():
            break
        moved = fgsm(model, x_adv[active], labels[active], step, targeted=target is not None)
        x_adv[active] = moved
    return x_adv, linf


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def accuracy_under(model: nn.Module, split: Split, attack: Attack, *, batch_size: int = 512,
                   limit: int = 0) -> float:
    """Accuracy on (the first `limit` images of) a split after `attack(model, x, y)` perturbs each
    batch. The model is put in eval mode: attacks and scores see the deployed network."""
    model.eval()
    n = len(split) if limit <= 0 else min(limit, len(split))
    correct = 0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x, y = to_float(split.x[start:stop]), split.y[start:stop]
        correct += int(_correct(model, attack(model, x, y), y).sum())
    return correct / max(n, 1)


def fgsm_attack(eps: float) -> Attack:
    return lambda model, x, y: fgsm(model, x, y, eps)


def pgd_attack(eps: float, steps: int, seed: int = 0) -> Attack:
    return lambda model, x, y: pgd(model, x, y, eps, steps=steps, seed=seed)


def success_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Untargeted attack success: of the images the model got right, the fraction it now gets wrong."""
    model.eval()
    was_right = _correct(model, x, y)
    now_wrong = ~_correct(model, x_adv, y)
    return float((was_right & now_wrong).sum()) / max(int(was_right.sum()), 1)
