"""MLPs, residual blocks, CNNs and a CIFAR-stem ResNet-18, all behind one constructor.

Every image model starts with `Normalize` (normalisation inside the model: inputs are pixels in
[0, 1], which Lab 4's attacks need) and ends with global pooling + a linear classifier where it is
convolutional (what CAM needs). Conv nets expose `stem`, `stages` and `head` so transfer learning
can freeze "all but the last k stages" the same way for every architecture.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLPBlock(nn.Module):
    """Linear-ReLU-Linear, plus the identity skip when `residual` (the only difference)."""

    def __init__(self, width: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.fc2(self.act(self.fc1(x)))
        if self.residual:
            x = x + shortcut
        return self.act(x)


class MLP(nn.Module):
    """Flatten -> Linear(in, width) -> ReLU -> `depth` MLPBlocks -> Linear(width, classes).

    `width` is the number of hidden units; `depth` counts the blocks after the first hidden layer, so
    depth=0 is the one-hidden-layer MLP (2 Linear layers) and each block adds 2 Linear layers."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, width: int, depth: int, residual: bool,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        in_features = int(torch.tensor(in_shape).prod())
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU())
        self.blocks = nn.Sequential(*[MLPBlock(width, residual) for _ in range(depth)])
        self.head = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(self.normalize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvBlock(nn.Module):
    """torchvision-BasicBlock shape: conv3x3-BN-ReLU-conv3x3-BN (+ shortcut if `residual`) -> ReLU.
    A projection shortcut (1x1 conv + BN) is used where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        # The projection is part of the skip: a plain block has none (DDP rejects unused parameters).
        if residual and (stride != 1 or cin != cout):
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x) if self.residual else None
        x = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        if self.residual:
            x = x + shortcut
        return self.act(x)


class ConvNet(nn.Module):
    """normalize -> stem -> stages -> global average pool -> linear head."""

    def __init__(self, normalize: Normalize, stem: nn.Module, stages: Sequence[nn.Module], width: int,
                 num_classes: int) -> None:
        super().__init__()
        self.normalize = normalize
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))
        for stage in self.stages:
            x = stage(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The activations that feed the classifier (transfer learning's frozen features)."""
        return self.pool(self.feature_maps(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cnn(in_channels: int, num_classes: int, width: int, depth: int, residual: bool,
        mean: Sequence[float], std: Sequence[float], num_stages: int = 3) -> ConvNet:
    """`num_stages` stages of `depth` ConvBlocks; width doubles and resolution halves per stage.
    `depth` >= 1: the first block of a stage is the one that halves the resolution."""
    if depth < 1:
        raise ValueError(f"depth: must be >= 1 for a CNN (blocks per stage), got {depth}")
    stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    stages, cin = [], width
    for s in range(num_stages):
        cout = width * 2 ** s
        blocks = [ConvBlock(cin if b == 0 else cout, cout, 2 if (s > 0 and b == 0) else 1, residual) for b in range(depth)]
        stages.append(nn.Sequential(*blocks))
        cin = cout
    return ConvNet(Normalize(mean, std), stem, stages, cin, num_classes)


def resnet18_cifar(in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> ConvNet:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""
    import torchvision  # here, not at the top: ~1 s of every trial process's start-up otherwise

    net = torchvision.models.resnet18(num_classes=num_classes)
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), net.bn1, net.relu)
    return ConvNet(Normalize(mean, std), stem, [net.layer1, net.layer2, net.layer3, net.layer4], 512, num_classes)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weight matrices/kernels in forward order (for per-layer gradient norms)."""
    return [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]


class Architecture(Protocol):
    """The architecture fields of a config (trainables.recipe.ImageRecipe: Lab 1, Lab 4, a source CNN)."""

    model: str       # "mlp" | "cnn" | "resnet18"
    width: int       # MLP hidden units; CNN channels of the first stage
    depth: int       # MLP blocks after the first hidden layer (0 = one hidden layer); CNN blocks per stage (>= 1)
    residual: bool
    num_stages: int


def build_model(cfg: Architecture, shape: tuple[int, int, int], num_classes: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> nn.Module:
    """The image classifier `cfg` describes, for inputs of `shape` (C, H, W) with these statistics."""
    if cfg.model == "mlp":
        return MLP(shape, num_classes, cfg.width, cfg.depth, cfg.residual, mean, std)
    if cfg.model == "cnn":
        return cnn(shape[0], num_classes, cfg.width, cfg.depth, cfg.residual, mean, std, cfg.num_stages)
    return resnet18_cifar(shape[0], num_classes, mean, std)
