"""The plain PyTorch loop shared by the labs: build optimizer/scheduler, one epoch, evaluate.

Speed on CUDA (`Speed`): bf16 autocast and channels_last memory format, on by default in the lab
configs and no-ops off CUDA (CPU bf16 autocast is rarely faster, and it would change the CPU
numerics the tests pin down); `compile_model` wraps a model in torch.compile, an option on any
device. A lab adopts them in two lines (see trainables/lab1/classifier.py):

    net, speed = training_net(model, ctx, cfg)   # cfg has amp, channels_last, compile
    ... train_and_validate(net, opt, sched, data, cfg, ctx, epoch, speed); evaluate(net, split, speed=speed)

and in a custom loop: `with speed.autocast(): logits = net(speed.input(x))`.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .context import Context
from .data import ImageData, Split, batches, to_float


@dataclass(frozen=True)
class Speed:
    """What the loop does for speed on this device: `amp` = bf16 autocast, `channels_last` = NHWC
    memory format for conv nets. Build it with `for_model`, which switches off what does not apply."""

    amp: bool = False
    channels_last: bool = False

    @classmethod
    def for_model(cls, model: nn.Module, device: torch.device, *, amp: bool = True,
                  channels_last: bool = True) -> "Speed":
        """Only on CUDA; channels_last only for models with 2-d convolutions (an MLP's Flatten
        would copy NHWC inputs back for nothing)."""
        cuda = torch.device(device).type == "cuda"
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        return cls(amp=amp and bf16_on(device), channels_last=channels_last and cuda and has_conv)

    def autocast(self) -> ContextManager[Any]:
        return autocast_context(torch.device("cuda"), self.amp)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Converts the model's 4-d weights to channels_last (before DDP wraps it, as DDP wants)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x


def bf16_on(device: torch.device) -> bool:
    """bf16 mixed precision pays on CUDA GPUs with bf16 units (Ampere and later); older GPUs (V100,
    T4) would emulate it slowly, and Hugging Face's Trainer refuses `bf16=True` there."""
    return torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported()


def autocast_context(device: torch.device, enabled: bool) -> ContextManager[Any]:
    """bf16 autocast on CUDA when enabled (no GradScaler needed: bf16 has fp32's exponent range);
    a no-op on any other device."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_model(net: nn.Module, enabled: bool, cuda_graphs: bool = False) -> nn.Module:
    """torch.compile(net) when enabled. Give it the DDP-wrapped net (compile after wrapping: the
    compiler then splits the graph at DDP's gradient buckets, keeping communication overlapped).
    `cuda_graphs` (one CUDA device, no DDP): mode "reduce-overhead", which replays each step as a
    CUDA graph. The lab models are small enough for a step to be bound by kernel launches, not
    FLOPs: measured on an H200, a ResNet-18 CIFAR-10 epoch takes 1.9 s eager (bf16, channels_last),
    2.0 s compiled in the default mode, 1.19 s with CUDA graphs (benchmarks/README.md). The first
    steps pay the compilation (tens of seconds), so it pays off for long runs only."""
    if not enabled:
        return net
    return torch.compile(net, mode="reduce-overhead" if cuda_graphs else None)


class SpeedConfig(Protocol):
    """The speed fields of a lab config (Lab1Config, Lab4Config)."""

    amp: bool
    channels_last: bool
    compile: bool


def training_net(model: nn.Module, ctx: Context, cfg: SpeedConfig) -> tuple[nn.Module, Speed]:
    """(net, speed): the net that trains is `model` in the memory format `speed` chose, prepared by
    the context (moved to its device, DDP-wrapped under Ray Train) and compiled if asked (CUDA graphs
    on one GPU without DDP). `model` itself stays the unwrapped, uncompiled module: what checkpoints,
    probes and attacks use; it shares its parameters with the net."""
    speed = Speed.for_model(model, ctx.device, amp=cfg.amp, channels_last=cfg.channels_last)
    net = compile_model(ctx.prepare_model(speed.prepare(model)), cfg.compile,
                        cuda_graphs=ctx.device.type == "cuda" and ctx.world_size == 1)
    return net, speed


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0) or Adam/AdamW. On CUDA the fused implementation: one kernel
    for the whole update instead of a few per parameter tensor (the lab models are small enough for
    kernel launches to matter); elsewhere PyTorch's default."""
    params = list(params)
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0,
                               **fused)
    if name == "adam":
        if weight_decay:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)
        return torch.optim.Adam(params, lr=lr, **fused)
    raise ValueError(f"optimizer: unknown {name!r}")


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


Perturb = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_one_epoch(net: nn.Module, opt: torch.optim.Optimizer, sched: Any, split: Split, *, batch_size: int,
                    seed: int, epoch: int, crop_pad: int = 0, flip: bool = False, rank: int = 0,
                    world_size: int = 1, speed: Speed = Speed(), perturb: Perturb | None = None
                    ) -> tuple[float, float]:
    """One pass over this rank's shard; returns (mean loss, accuracy) over the samples it saw.
    `perturb(x, y)` replaces each batch before the step (Lab 4's adversarial examples); it runs
    outside autocast, so attacks stay in fp32."""
    net.train()
    total_loss = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device)
    seen = 0
    for x, y in batches(split, batch_size, shuffle=True, seed=seed, epoch=epoch, crop_pad=crop_pad, flip=flip,
                        rank=rank, world_size=world_size):
        if perturb is not None:
            x = perturb(x, y)
        with speed.autocast():  # forward and loss; backward runs outside autocast, as PyTorch advises
            logits = net(speed.input(x))
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


class EpochConfig(Protocol):
    """The config fields an image lab's epoch reads (Lab1Config, TransferConfig, Lab4Config)."""

    batch_size: int
    seed: int
    crop_pad: int
    flip: bool


def train_and_validate(net: nn.Module, opt: torch.optim.Optimizer, sched: Any, data: ImageData, cfg: EpochConfig,
                       ctx: Context, epoch: int, speed: Speed = Speed(), perturb: Perturb | None = None
                       ) -> dict[str, float]:
    """One training epoch on this rank's shard, then validation: the metrics every image lab
    reports each epoch (`epoch` counts from 1 there)."""
    train_loss, train_acc = train_one_epoch(net, opt, sched, data.train, batch_size=cfg.batch_size, seed=cfg.seed,
                                            epoch=epoch, crop_pad=cfg.crop_pad, flip=cfg.flip, rank=ctx.rank,
                                            world_size=ctx.world_size, speed=speed, perturb=perturb)
    val_loss, val_acc = evaluate(net, data.val, speed=speed)
    return {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc, "lr": sched.get_last_lr()[0]}


@torch.no_grad()
def evaluate(net: nn.Module, split: Split, batch_size: int = 1024, speed: Speed = Speed()) -> tuple[float, float]:
    """(mean loss, accuracy) on the whole split."""
    net.eval()
    total_loss = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device)
    for start in range(0, len(split), batch_size):
        x, y = to_float(split.x[start:start + batch_size]), split.y[start:start + batch_size]
        with speed.autocast():
            logits = net(speed.input(x))
            total_loss += F.cross_entropy(logits, y, reduction="sum").float()
        correct += (logits.argmax(1) == y).sum()
    n = max(len(split), 1)
    return (total_loss / n).item(), (correct / n).item()


@torch.no_grad()
def predict(net: nn.Module, x_uint8: torch.Tensor, batch_size: int = 1024, speed: Speed = Speed()) -> torch.Tensor:
    """Logits (float32) for uint8 images, in eval mode."""
    net.eval()
    out = []
    for i in range(0, len(x_uint8), batch_size):
        with speed.autocast():
            out.append(net(speed.input(to_float(x_uint8[i:i + batch_size]))).float())
    return torch.cat(out)


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
