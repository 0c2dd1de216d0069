"""Lab 1 transfer learning: a CNN trained on the source classes (CIFAR-10; quick: digits 0-4) reused
on the target (CIFAR-100; quick: digits 5-9, few training images), one variant per trial:

  linear-svc  frozen features (the pooled activations feeding the classifier) -> StandardScaler +
              LinearSVC, fitted on the whole training split
  knn         the same features -> standardised -> k-nearest neighbours
  head        a new target head trained on frozen features (frozen BatchNorm statistics too)
  finetune    the new head + the last `unfreeze_stages` stages trained, the rest frozen
  scratch     the same architecture from random initialisation, all of it trained (the baseline
              that says whether transfer helped)

Every variant sees the same target train/val/test splits; selection uses val, test is reported once.

In-process:  python -c "from trainables.lab1.transfer import *; from trainables.context import LocalContext;
                        print(train(TransferConfig(), LocalContext()))"
Through the orchestrator: python orchestrator/run.py lab1 --study transfer
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..config import bounded
from ..context import Context, json_bytes
from ..data import ImageData, Split, to_float
from ..models import ConvNet
from ..recipe import TrainingRecipe, load_data
from ..training import Speed, evaluate, make_optimizer, make_scheduler, train_and_validate
from .source import SourceFields, describe, obtain_source

Variant = Literal["linear-svc", "knn", "head", "finetune", "scratch"]
SKLEARN_VARIANTS = ("linear-svc", "knn")


@dataclass(frozen=True)
class TransferConfig(SourceFields, TrainingRecipe):
    """The source (SourceFields), the target's training recipe (trainables/recipe.py; the network
    is the source's: head, finetune and scratch train it, the scikit-learn variants do not), plus:"""

    variant: Variant = "head"
    # the target (recipe fields, with the defaults of a small target set)
    classes: tuple[int, ...] = (5, 6, 7, 8, 9)  # target labels kept (relabelled 0..k-1); () = all
    val_fraction: float = 0.15              # of the target training set, held out for selection
    epochs: int = 15                        # head, finetune, scratch
    batch_size: int = 32                    # images per step
    unfreeze_stages: int = bounded(1, ge=1)  # finetune: the last k stages train (clamped to the net's stages)
    # scikit-learn variants
    svc_c: float = bounded(1.0, gt=0)       # LinearSVC inverse regularisation
    knn_k: int = bounded(5, ge=1)           # neighbours


class PartlyFrozen(nn.Module):
    """Wraps a net so that `train()` leaves its frozen parts in eval mode: their BatchNorm running
    statistics stay the source's, so frozen features really are the source's features."""

    def __init__(self, net: nn.Module, frozen: list[nn.Module]) -> None:
        super().__init__()
        self.net = net
        self.frozen = frozen  # a plain list: not registered twice as submodules

    def train(self, mode: bool = True) -> "PartlyFrozen":
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def trainable_stages(cfg: TransferConfig, num_stages: int) -> int:
    """How many of the last stages train: none (head), k (finetune, at most all), all (scratch)."""
    if cfg.variant == "finetune":
        return min(cfg.unfreeze_stages, num_stages)
    return num_stages if cfg.variant == "scratch" else 0


def freeze_all_but(model: ConvNet, last_stages: int, everything: bool = False) -> list[nn.Module]:
    """Turns off gradients outside the head and the last `last_stages` stages; returns the frozen
    modules (`everything`: nothing is frozen)."""
    if everything:
        return []
    cut = len(model.stages) - last_stages
    frozen = [model.normalize, model.stem, *model.stages[:cut]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


@torch.no_grad()
def extract_features(model: ConvNet, split: Split, batch_size: int = 512) -> np.ndarray:
    model.eval()
    parts = [model.features(to_float(split.x[i:i + batch_size])).cpu() for i in range(0, len(split), batch_size)]
    return torch.cat(parts).numpy()


def fit_sklearn(cfg: TransferConfig, model: ConvNet, data: ImageData, test: bool = True) -> dict[str, float]:
    """Frozen features of every split (the test split only with `test`), a scikit-learn classifier
    fitted on the whole training split."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    splits = ("train", "val", "test") if test else ("train", "val")
    feats = {name: extract_features(model, getattr(data, name)) for name in splits}
    labels = {name: getattr(data, name).y.cpu().numpy() for name in feats}
    head = (LinearSVC(C=cfg.svc_c, max_iter=5000, random_state=cfg.seed) if cfg.variant == "linear-svc"
            else KNeighborsClassifier(n_neighbors=min(cfg.knn_k, len(labels["train"]))))
    clf = make_pipeline(StandardScaler(), head).fit(feats["train"], labels["train"])
    acc = {name: float((clf.predict(feats[name]) == labels[name]).mean()) for name in feats}
    return {"epoch": 1, "train_acc": acc["train"], "val_acc": acc["val"], **({"test_acc": acc["test"]} if test else {}),
            "feature_dim": float(feats["train"].shape[1]), "train_images": float(len(labels["train"]))}


def target_model(cfg: TransferConfig, source: ConvNet, num_classes: int) -> tuple[ConvNet, list[nn.Module], int]:
    """The source net with a new target head, parts frozen per variant: (model, frozen, stages trained)."""
    torch.manual_seed(cfg.seed)  # the new head's initial weights
    source.head = nn.Linear(source.head.in_features, num_classes)
    k = trainable_stages(cfg, len(source.stages))
    frozen = freeze_all_but(source, k, everything=cfg.variant == "scratch")
    return source, frozen, k


def train(cfg: TransferConfig, ctx: Context) -> dict[str, float]:
    """One transfer variant: reports train/val metrics per epoch and test metrics once, at the end."""
    torch.manual_seed(cfg.seed)
    state = ctx.restore()
    # Source weights are not needed from scratch, nor when resuming (the checkpoint has them all).
    src, source, source_metrics = obtain_source(cfg, cfg.seed, ctx,
                                                weights=cfg.variant != "scratch" and state is None)
    data = load_data(cfg, ctx)
    files = {"config.json": json_bytes(asdict(cfg)), "source.json": json_bytes(describe(src))}
    if cfg.variant in SKLEARN_VARIANTS:
        metrics = {**fit_sklearn(cfg, source.to(ctx.device), data, ctx.evaluate_test), **source_metrics}
        ctx.report(metrics, files=files, final=True)
        return metrics

    if cfg.variant == "scratch":
        torch.manual_seed(cfg.seed)  # random initial weights, the same for every scratch trial
        source.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    model, frozen, stages = target_model(cfg, source, data.num_classes)
    speed = Speed.for_model(model, ctx.device, amp=cfg.amp, channels_last=cfg.channels_last)
    net = ctx.prepare_model(PartlyFrozen(speed.prepare(model), frozen))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    steps = -(-(len(data.train) // ctx.world_size) // cfg.batch_size)
    sched = make_scheduler(opt, cfg.schedule, cfg.epochs * steps)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["epoch"]) + 1
    fixed = {"stages_trained": float(stages), "trainable_params": float(sum(p.numel() for p in params)),
             **source_metrics}

    metrics: dict[str, float] = {}
    for epoch in range(start, cfg.epochs):
        metrics = {**train_and_validate(net, opt, sched, data, cfg, ctx, epoch, speed), **fixed}
        last = epoch + 1 == cfg.epochs
        if last and ctx.evaluate_test:  # the test set, once, for the finished model
            metrics["test_loss"], metrics["test_acc"] = evaluate(net, data.test, speed=speed)
        state_out = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "epoch": epoch, "config": asdict(cfg)}
        ctx.report(metrics, state=state_out, files=files if last else None, final=last)
    return metrics
