"""The plain PyTorch loop shared by the labs: build optimizer/scheduler, one epoch, evaluate."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split, batches, to_float


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay else torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer: unknown {name!r}")


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def train_one_epoch(net: nn.Module, opt: torch.optim.Optimizer, sched: Any, split: Split, *, batch_size: int,
                    seed: int, epoch: int, crop_pad: int = 0, flip: bool = False, rank: int = 0,
                    world_size: int = 1) -> tuple[float, float]:
    """One pass over this rank's shard; returns (mean loss, accuracy) over the samples it saw."""
    net.train()
    total_loss = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device)
    seen = 0
    for x, y in batches(split, batch_size, shuffle=True, seed=seed, epoch=epoch, crop_pad=crop_pad, flip=flip,
                        rank=rank, world_size=world_size):
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        # Accumulate on the device: one host sync per epoch, not per batch.
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return (total_loss / max(seen, 1)).item(), (correct / max(seen, 1)).item()


@torch.no_grad()
def evaluate(net: nn.Module, split: Split, batch_size: int = 1024) -> tuple[float, float]:
    """(mean loss, accuracy) on the whole split."""
    net.eval()
    total_loss = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device)
    for start in range(0, len(split), batch_size):
        x, y = to_float(split.x[start:start + batch_size]), split.y[start:start + batch_size]
        logits = net(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(len(split), 1)
    return (total_loss / n).item(), (correct / n).item()


@torch.no_grad()
def predict(net: nn.Module, x_uint8: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for uint8 images, in eval mode."""
    net.eval()
    return torch.cat([net(to_float(x_uint8[i:i + batch_size])) for i in range(0, len(x_uint8), batch_size)])


def layer_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """L2 norm of each weight layer's gradient on one fixed batch, input side first.

    BatchNorm momentum is set to 0 for the probe so that its running statistics stay untouched."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    norms = [p.grad.norm().item() for n, p in model.named_parameters() if p.ndim >= 2 and p.grad is not None]
    model.zero_grad(set_to_none=True)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    return norms


def weights_digest(model: nn.Module) -> float:
    """A cheap fingerprint of all parameters: equal across DDP replicas that are in sync."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum().item() for i, p in enumerate(model.parameters())))
