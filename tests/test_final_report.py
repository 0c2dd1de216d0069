"""The end of a trial is explicit: every trainable marks its last report `final=True` (and no earlier
one), LocalContext records it as `finished`, and the Ray contexts add FINAL_KEY to that result, so the
tracker tells a finished trial from one a scheduler stopped without guessing from metric names."""
from __future__ import annotations

from typing import Any, Callable

import pytest

from orchestrator.studies import get_study
from trainables.config import from_dict
from trainables.context import FINAL_KEY, LocalContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOURCE = {"source_width": 4, "source_num_stages": 2, "source_epochs": 1, "source_classes": (0, 1, 2, 3, 4)}
LAB4 = {"model": "mlp", "width": 16, "epochs": 2, "eps_grid": (0.0, 0.1), "attack_steps": 5, "attack_step": 0.05,
        "pgd_steps": 2, "max_eval": 64, "target": 1}
# Plain FGSM training at a large eps: catastrophic overfitting, the trial stops at epoch 5 of 20.
COLLAPSE = {"model": "mlp", "width": 64, "epsilon": 0.3, "mix": 1.0, "random_start": False, "alpha_ratio": 1.0,
            "lr": 1e-2, "schedule": "constant", "epochs": 20, "eps_grid": (0.0, 0.1), "attack_steps": 2,
            "max_eval": 32}


def lab1() -> tuple[Callable, Any]:
    from trainables.lab1.classifier import Lab1Config, train

    return train, Lab1Config(epochs=2, max_train=200)


def transfer(variant: str) -> Callable[[], tuple[Callable, Any]]:
    def make() -> tuple[Callable, Any]:
        from trainables.lab1.transfer import TransferConfig, train

        return train, TransferConfig(variant=variant, epochs=2, max_train=20, **SOURCE)

    return make


def cam() -> tuple[Callable, Any]:
    from trainables.lab1.cam import CamConfig, train

    return train, CamConfig(**{k: v for k, v in SOURCE.items() if k != "source_classes"}, images_per_class=1,
                            mistakes=1, max_classes=2, max_eval=20)


def lab4(study: str, overrides: dict[str, Any] = LAB4) -> Callable[[], tuple[Callable, Any]]:
    def make() -> tuple[Callable, Any]:
        from trainables.lab4.robustness import Lab4Config, train

        return train, from_dict(Lab4Config, {**get_study("lab4", study).base_config("quick"), **overrides})

    return make


def sentiment(method: str) -> Callable[[], tuple[Callable, Any]]:
    def make() -> tuple[Callable, Any]:
        from trainables.lab3.sentiment import SentimentConfig, train

        return train, SentimentConfig(method=method, max_train=64, epochs=2, lr=2e-3)

    return make


def clip(method: str) -> Callable[[], tuple[Callable, Any]]:
    def make() -> tuple[Callable, Any]:
        from trainables.lab3.clip import ClipConfig, train

        return train, ClipConfig(method=method, epochs=2, shots=2, max_eval=32)

    return make


@pytest.mark.parametrize("make, reports", [
    (lab1, 2), (transfer("scratch"), 2), (transfer("linear-svc"), 1), (cam, 1),
    (lab4("fgsm"), 1), (lab4("ood"), 1), (lab4("targeted"), 1),  # post-hoc: one probe of the trained model
    (lab4("classifier"), 2), (lab4("adv-train"), 2),
    (lab4("adv-train", COLLAPSE), 5),  # the catastrophic-overfitting stop ends the trial early
    (sentiment("frozen"), 1), (sentiment("lora"), 2),  # lora: the HF Trainer's held-back last epoch
    (clip("zeroshot"), 1), (clip("lora"), 2),
], ids=["lab1", "transfer-scratch", "transfer-svc", "cam", "lab4-fgsm", "lab4-ood", "lab4-targeted",
        "lab4-classifier", "lab4-adv-train", "lab4-collapse", "sentiment-frozen", "sentiment-lora", "clip-zeroshot", "clip-lora"])
def test_the_last_report_and_only_it_is_final(make, reports):
    train, cfg = make()
    ctx = LocalContext()
    metrics = train(cfg, ctx)
    assert ctx.final_flags == [False] * (reports - 1) + [True] and ctx.finished
    assert ctx.final == metrics


def test_a_final_report_without_test_metrics_is_finished():
    def trainable(cfg: Any, ctx: LocalContext) -> None:
        ctx.report({"epoch": 1, "val_acc": 0.5})
        ctx.report({"epoch": 2, "val_acc": 0.6}, final=True)

    ctx = LocalContext()
    trainable(None, ctx)
    assert ctx.finished and ctx.final_flags == [False, True] and "test_acc" not in ctx.final
    stopped = LocalContext()
    stopped.report({"epoch": 1, "test_acc": 0.9})  # a test metric alone does not end a trial
    assert not stopped.finished


def test_the_tune_context_adds_the_final_key_to_the_last_result_only(monkeypatch):
    from orchestrator import execution

    results: list[dict[str, Any]] = []
    monkeypatch.setattr(execution.tune, "report", lambda result, checkpoint=None: results.append(result))
    ctx = object.__new__(execution.TuneContext)  # no Ray session: only report() is exercised
    ctx.node_id = "node"
    ctx.report({"epoch": 1})
    ctx.report({"epoch": 2}, final=True)
    assert [r.get(FINAL_KEY) for r in results] == [None, 1] and results[1]["epoch"] == 2


def test_the_train_context_adds_the_final_key_to_the_last_result_only(monkeypatch):
    from orchestrator import ray_train

    results: list[dict[str, Any]] = []
    monkeypatch.setattr(ray_train.ray.train, "report", lambda result, checkpoint=None: results.append(result))
    ctx = object.__new__(ray_train.TrainContext)
    ctx.rank = 1  # not rank 0: no checkpoint to build
    ctx.report({"epoch": 1}, state={"w": 1})
    ctx.report({"epoch": 2}, final=True)
    assert [r.get(FINAL_KEY) for r in results] == [None, 1]
