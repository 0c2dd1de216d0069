"""Lab 1: MLPs, CNNs, residual connections on images (MNIST, CIFAR-10; digits offline).

In-process:  python -c "from trainables.lab1.classifier import *; from trainables.context import LocalContext;
                        print(train(Lab1Config(), LocalContext()))"
Through the orchestrator: python orchestrator/run.py lab1 --study residual-mlp
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..context import Context, json_bytes
from ..data import to_float
from ..models import build_model
from ..recipe import ImageRecipe, load_data
from ..training import (evaluate, layer_grad_norms, make_optimizer, make_scheduler, train_and_validate, training_net,
                       weights_digest)


@dataclass(frozen=True)
class Lab1Config(ImageRecipe):
    """The image recipe (trainables/recipe.py: data, training, network) as it is; plus:"""

    grad_norms: bool = False       # per-layer gradient norms on one fixed batch, each epoch


def train(cfg: Lab1Config, ctx: Context) -> dict[str, float]:
    """Trains, reporting train/val metrics each epoch and (`ctx.evaluate_test`) test metrics once, after the last epoch."""
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
        files, last = None, epoch + 1 == cfg.epochs
        if last:
            metrics["weights_digest"] = weights_digest(model)  # a re-trained selected model is checked against it
            files = {"config.json": json_bytes(asdict(cfg))}
        if last and ctx.evaluate_test:  # the test set, once, for the finished model
            metrics["test_loss"], metrics["test_acc"] = evaluate(net, data.test, speed=speed)
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch, "config": asdict(cfg)}
        ctx.report(metrics, state=state, files=files, final=last)
    return metrics
