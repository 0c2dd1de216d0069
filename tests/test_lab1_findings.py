"""Lab 1's central finding on real data (digits), seeded, in-process: residual connections keep a
deep MLP trainable where the plain one fails, and the gradient norms show why."""
from __future__ import annotations

from trainables.context import LocalContext
from trainables.lab1.classifier import Lab1Config, train

QUICK = dict(dataset="digits", epochs=10, batch_size=64, width=64, val_fraction=0.15, lr=1e-3, seed=0, grad_norms=True)


def test_residual_mlp_trains_where_the_plain_one_fails():
    plain, res = LocalContext(), LocalContext()
    train(Lab1Config(depth=16, residual=False, **QUICK), plain)
    train(Lab1Config(depth=16, residual=True, **QUICK), res)
    assert plain.final["val_acc"] < 0.3           # chance is 0.1: the plain 16-block MLP does not learn
    assert res.final["val_acc"] > 0.9             # the residual one does
    assert res.final["val_acc"] - plain.final["val_acc"] > 0.5
    # Why: the first layer's gradient has vanished in the plain net, not in the residual one.
    assert plain.reports[0]["grad_norm/00"] < 1e-3 * res.reports[0]["grad_norm/00"]


def test_shallow_plain_mlp_is_fine():
    ctx = LocalContext()
    train(Lab1Config(depth=1, residual=False, **QUICK), ctx)
    assert ctx.final["val_acc"] > 0.9


def test_reports_every_epoch_and_test_once():
    ctx = LocalContext()
    train(Lab1Config(depth=1, **{**QUICK, "epochs": 3}), ctx)
    assert [r["epoch"] for r in ctx.reports] == [1, 2, 3]
    assert ["test_acc" in r for r in ctx.reports] == [False, False, True]
    assert "config.json" in ctx.files


def test_resume_from_checkpoint_continues_where_it_stopped(tmp_path):
    """A run stopped after 2 of 4 epochs and restarted from its checkpoint ends where an
    uninterrupted run ends (constant lr: the cosine schedule's length depends on `epochs`)."""
    cfg = dict(QUICK, schedule="constant")
    straight, resumed = LocalContext(), LocalContext(checkpoint_dir=tmp_path)
    train(Lab1Config(depth=2, **{**cfg, "epochs": 4}), straight)
    train(Lab1Config(depth=2, **{**cfg, "epochs": 2}), resumed)
    train(Lab1Config(depth=2, **{**cfg, "epochs": 4}), resumed)
    assert [r["epoch"] for r in resumed.reports] == [1, 2, 3, 4]
    assert abs(straight.final["val_acc"] - resumed.final["val_acc"]) < 1e-6
    assert abs(straight.final["train_loss"] - resumed.final["train_loss"]) < 1e-5
