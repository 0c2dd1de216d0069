"""FGSM / PGD / FGSM-RS / iterative FGSM: the properties every attack must have, on a small
classifier trained on the real digits in a second (no Ray)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.lab4.attacks import (accuracy_under, fgsm, fgsm_attack, fgsm_rs, iterative_fgsm, pgd, pgd_attack,
                                success_rate)
from trainables.data import Split, load_image_data, to_float
from trainables.models import MLP, Normalize

CPU = torch.device("cpu")


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits():
    return load_image_data("digits", None, CPU, val_fraction=0.15)


@pytest.fixture(scope="module")
def linear(digits):
    """Softmax regression: its loss is convex in the input, so FGSM provably cannot lower it."""
    torch.manual_seed(0)
    model = nn.Sequential(Normalize(digits.mean, digits.std), nn.Flatten(), nn.Linear(64, 10))
    return _fit(model, to_float(digits.train.x), digits.train.y)


@pytest.fixture(scope="module")
def mlp(digits):
    torch.manual_seed(0)
    model = MLP(digits.shape, 10, 64, 1, False, digits.mean, digits.std)
    return _fit(model, to_float(digits.train.x), digits.train.y)


@pytest.fixture(scope="module")
def batch(digits):
    return to_float(digits.test.x[:128]), digits.test.y[:128]


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.2])
def test_fgsm_stays_in_the_eps_ball_and_the_image_range(mlp, batch, eps):
    x, y = batch
    x_adv = fgsm(mlp, x, y, eps)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.5 * eps  # it did move


def test_fgsm_with_zero_eps_returns_the_input(mlp, batch):
    x, y = batch
    assert torch.equal(fgsm(mlp, x, y, 0.0), x)
    assert torch.equal(pgd(mlp, x, y, 0.0), x)
    assert torch.equal(fgsm_rs(mlp, x, y, 0.0), x)


def test_fgsm_never_lowers_a_convex_loss_per_image(linear, batch):
    x, y = batch
    for eps in (0.01, 0.1):
        with torch.no_grad():
            before = F.cross_entropy(linear(x), y, reduction="none")
            after = F.cross_entropy(linear(fgsm(linear, x, y, eps)), y, reduction="none")
        assert (after >= before - 1e-5).all()
        assert after.mean() > before.mean()


def test_fgsm_raises_the_loss_of_a_nonlinear_model(mlp, batch):
    x, y = batch
    with torch.no_grad():
        before = F.cross_entropy(mlp(x), y)
        after = F.cross_entropy(mlp(fgsm(mlp, x, y, 0.05)), y)
    assert after > before + 0.1


def test_attacks_leave_parameter_gradients_alone(mlp, batch):
    x, y = batch
    mlp.zero_grad(set_to_none=True)
    fgsm(mlp, x, y, 0.1)
    pgd(mlp, x, y, 0.1, steps=2)
    assert all(p.grad is None for p in mlp.parameters())


def test_targeted_fgsm_moves_predictions_toward_the_target(mlp, batch):
    x, y = batch
    target = torch.full_like(y, 3)
    keep = y != 3
    with torch.no_grad():
        p_before = F.softmax(mlp(x), 1)[:, 3][keep]
        x_adv = fgsm(mlp, x, target, 0.1, targeted=True)
        p_after = F.softmax(mlp(x_adv), 1)[:, 3][keep]
        hits_before = (mlp(x).argmax(1) == 3)[keep].float().mean()
        hits_after = (mlp(x_adv).argmax(1) == 3)[keep].float().mean()
    assert p_after.mean() > p_before.mean() + 0.05
    assert (p_after > p_before).float().mean() > 0.8
    assert hits_after > hits_before


def test_pgd_stays_in_the_ball_and_is_at_least_as_strong_as_fgsm(mlp, digits):
    x, y = to_float(digits.test.x), digits.test.y
    x_adv = pgd(mlp, x, y, 0.1, steps=10)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    fgsm_acc = accuracy_under(mlp, digits.test, fgsm_attack(0.1))
    pgd_acc = accuracy_under(mlp, digits.test, pgd_attack(0.1, 10))
    clean_acc = accuracy_under(mlp, digits.test, fgsm_attack(0.0))
    assert pgd_acc <= fgsm_acc + 0.01 and fgsm_acc < clean_acc


def test_fgsm_rs_stays_in_the_ball_and_without_random_start_is_fgsm(mlp, batch):
    x, y = batch
    gen = torch.Generator().manual_seed(0)
    x_rs = fgsm_rs(mlp, x, y, 0.1, alpha_ratio=1.25, gen=gen)
    assert (x_rs - x).abs().max() <= 0.1 + 1e-6 and x_rs.min() >= 0 and x_rs.max() <= 1
    assert not torch.equal(x_rs, fgsm(mlp, x, y, 0.1))  # the random start changed the step
    plain = fgsm_rs(mlp, x, y, 0.1, alpha_ratio=1.0, random_start=False)
    assert torch.allclose(plain, fgsm(mlp, x, y, 0.1))


def test_iterative_fgsm_reports_the_budget_each_image_needed(mlp, batch):
    x, y = batch
    step, max_steps = 0.01, 40
    x_adv, linf = iterative_fgsm(mlp, x, y, step=step, max_steps=max_steps)
    with torch.no_grad():
        pred, pred_adv = mlp(x).argmax(1), mlp(x_adv).argmax(1)
    found = torch.isfinite(linf)
    assert found.float().mean() > 0.9  # 0.4 L-inf is far more than digits need
    assert (pred_adv[found] != y[found]).all()              # every success is a real misclassification
    assert (linf[pred != y] == 0).all()                     # already wrong: no budget needed
    assert (linf[found] <= max_steps * step + 1e-6).all()
    assert torch.allclose(linf[found], (x_adv - x)[found].flatten(1).abs().amax(1))
    assert torch.equal(x_adv[~found], x_adv[~found].clamp(0, 1))


def test_iterative_targeted_fgsm_reaches_the_target(mlp, batch):
    x, y = batch
    keep = y != 5
    x, y = x[keep], y[keep]
    target = torch.full_like(y, 5)
    x_adv, linf = iterative_fgsm(mlp, x, y, step=0.01, max_steps=60, target=target)
    found = torch.isfinite(linf)
    with torch.no_grad():
        pred_adv = mlp(x_adv).argmax(1)
    assert found.float().mean() > 0.8
    assert (pred_adv[found] == 5).all()


def test_success_rate_counts_only_images_the_model_got_right(mlp, batch):
    x, y = batch
    assert success_rate(mlp, x, y, x) == 0.0
    x_adv = fgsm(mlp, x, y, 0.3)
    rate = success_rate(mlp, x, y, x_adv)
    with torch.no_grad():
        right = mlp(x).argmax(1) == y
        flipped = (mlp(x_adv).argmax(1) != y) & right
    assert rate == pytest.approx(float(flipped.sum()) / float(right.sum()))


def test_accuracy_under_respects_the_limit(mlp, digits):
    calls = []

    def spy(model, x, y):
        calls.append(len(x))
        return x

    accuracy_under(mlp, Split(digits.test.x, digits.test.y), spy, batch_size=50, limit=120)
    assert calls == [50, 50, 20]
