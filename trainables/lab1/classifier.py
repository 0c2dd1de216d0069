"""Lab 1: MLPs, CNNs, residual connections on images (MNIST, CIFAR-10; digits offline).

In-process:  python -c "from trainables.lab1.classifier import *; print(train(Lab1Config(), LocalContext()))"
Through the orchestrator: python orchestrator/run.py lab1 --study residual-mlp
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from ..config import check
from ..context import Context, json_bytes
from ..data import ImageData, load_image_data, to_float
from ..models import MLP, cnn, resnet18_cifar
from ..training import (evaluate, layer_grad_norms, make_optimizer, make_scheduler, train_and_validate, training_net,
                       weights_digest)

Dataset = Literal["digits", "mnist", "cifar10", "cifar100", "svhn", "synthetic"]


@dataclass(frozen=True)
class Lab1Config:
    model: Literal["mlp", "cnn", "resnet18"] = "mlp"
    dataset: Dataset = "digits"
    depth: int = 2                 # MLP: residual blocks (2 Linear each); CNN: blocks per stage
    width: int = 64                # MLP hidden units; CNN channels of the first stage
    residual: bool = False         # identity skip in every block (the only difference)
    num_stages: int = 3            # CNN stages (width doubles, resolution halves)
    epochs: int = 10
    batch_size: int = 128          # images per step (per worker under DDP)
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9          # SGD only
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "cosine"
    crop_pad: int = 0              # random-crop padding in pixels (0 = no crop)
    flip: bool = False             # random horizontal flip
    val_fraction: float = 0.1      # of the training set, held out for selection
    classes: tuple[int, ...] = ()  # keep only these labels (relabelled 0..k-1); () = all
    max_train: int = 0             # cap on training images (0 = all)
    grad_norms: bool = False       # per-layer gradient norms on one fixed batch, each epoch
    amp: bool = True               # bf16 autocast on CUDA (no-op on CPU)
    channels_last: bool = True     # NHWC memory format for conv nets on CUDA (no-op on CPU and for MLPs)
    compile: bool = False          # torch.compile the model (any device; costs tens of seconds up front)
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        check(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        check(self.num_stages >= 1, "num_stages", f"must be >= 1, got {self.num_stages}")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        check(0 < self.val_fraction < 0.5, "val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        check(self.crop_pad >= 0, "crop_pad", f"must be >= 0, got {self.crop_pad}")
        check(self.max_train >= 0, "max_train", f"must be >= 0, got {self.max_train}")


def build_model(cfg: Lab1Config, shape: tuple[int, int, int], num_classes: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> nn.Module:
    if cfg.model == "mlp":
        return MLP(shape, num_classes, cfg.width, cfg.depth, cfg.residual, mean, std)
    if cfg.model == "cnn":
        return cnn(shape[0], num_classes, cfg.width, cfg.depth, cfg.residual, mean, std, cfg.num_stages)
    return resnet18_cifar(shape[0], num_classes, mean, std)


def load_data(cfg: Lab1Config, ctx: Context) -> ImageData:
    return load_image_data(cfg.dataset, ctx.data_dir, ctx.device, val_fraction=cfg.val_fraction, seed=cfg.seed,
                           classes=cfg.classes, max_train=cfg.max_train)


def train(cfg: Lab1Config, ctx: Context) -> dict[str, float]:
    """Trains, reporting train/val metrics each epoch and test metrics once, after the last epoch."""
    torch.manual_seed(cfg.seed)  # same initial weights on every DDP rank and every retry
    data = load_data(cfg, ctx)
    model = build_model(cfg, data.shape, data.num_classes, data.mean, data.std)
    net, speed = training_net(model, ctx, cfg)
    opt = make_optimizer(net.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    steps = -(-(len(data.train) // ctx.world_size) // cfg.batch_size)
    sched = make_scheduler(opt, cfg.schedule, cfg.epochs * steps)
    start = 0
    if (state := ctx.restore()) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["epoch"]) + 1
    probe = (to_float(data.train.x[:256]), data.train.y[:256]) if cfg.grad_norms else None

    metrics: dict[str, float] = {}
    for epoch in range(start, cfg.epochs):
        metrics = {**train_and_validate(net, opt, sched, data, cfg, ctx, epoch, speed), "world_size": ctx.world_size}
        if probe is not None:
            norms = layer_grad_norms(model, *probe)
            metrics.update({f"grad_norm/{i:02d}": v for i, v in enumerate(norms)})
        files = None
        if epoch + 1 == cfg.epochs:  # the test set, once, for the finished model
            test_loss, test_acc = evaluate(net, data.test, speed=speed)
            metrics.update(test_loss=test_loss, test_acc=test_acc, weights_digest=weights_digest(model))
            files = {"config.json": json_bytes(asdict(cfg))}
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch, "config": asdict(cfg)}
        ctx.report(metrics, state=state, files=files)
    return metrics
