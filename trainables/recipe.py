"""The image-training recipe, declared once: which data, how it trains, which network.

`TrainingRecipe` is what trains an image net: data, steps, optimizer, augmentation, speed, seed
(Lab 1's transfer target takes it as it is: its network comes from the source). `ImageRecipe` adds
the network that `models.build_model` builds: Lab 1's classifier, Lab 4's, and the source CNN of
Lab 1's transfer and CAM studies (`source_*` fields, declared with `recipe_field`). Each field's
range is declared here, once; a lab config that wants another default redeclares the field with
that default only, and keeps the range (`config.bounds_of`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .config import BOUNDS, Config, bounded, bounds_of, check
from .context import Context
from .data import Dataset, ImageData, load_image_data

Model = Literal["mlp", "cnn", "resnet18"]
Optimizer = Literal["adam", "sgd"]
Schedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class TrainingRecipe(Config):
    """How an image net trains: data, steps, optimizer, augmentation, speed, seed."""

    # data
    dataset: Dataset = "digits"
    classes: tuple[int, ...] = bounded((), ge=0)     # keep only these labels (relabelled 0..k-1); () = all
    max_train: int = bounded(0, ge=0)                # cap on training images (0 = all)
    max_val_test: int = bounded(0, ge=0)             # cap on validation images and on test images, each (0 = all)
    val_fraction: float = bounded(0.1, gt=0, lt=0.5)  # of the training set, held out for selection
    # steps and optimizer
    epochs: int = bounded(10, ge=1)
    batch_size: int = bounded(128, ge=1)             # images per step (per worker under DDP)
    lr: float = bounded(1e-3, gt=0)
    optimizer: Optimizer = "adam"
    momentum: float = bounded(0.9, ge=0, lt=1)       # SGD only
    weight_decay: float = bounded(0.0, ge=0)
    schedule: Schedule = "cosine"
    # augmentation
    crop_pad: int = bounded(0, ge=0)                 # random-crop padding in pixels (0 = no crop)
    flip: bool = False                               # random horizontal flip
    # speed (trainables/training.py)
    amp: bool = True                                 # bf16 autocast on CUDA (no-op on CPU)
    channels_last: bool = True                       # NHWC for conv nets on CUDA (no-op on CPU and for MLPs)
    seed: int = bounded(0, ge=0)


@dataclass(frozen=True)
class ImageRecipe(TrainingRecipe):
    """The recipe plus the network it trains (`models.build_model`)."""

    model: Model = "mlp"
    # MLP: blocks (2 Linear each) after the first hidden layer, 0 = one hidden layer; CNN: blocks per stage (>= 1)
    depth: int = bounded(2, ge=0, note="0 = one hidden layer, MLP only")
    width: int = bounded(64, ge=1)                   # MLP hidden units; CNN channels of the first stage
    residual: bool = False                           # identity skip in every block (the only difference)
    num_stages: int = bounded(3, ge=1)               # CNN stages (width doubles, resolution halves)
    # torch.compile the training net (any device; costs tens of seconds up front). Not in TrainingRecipe:
    # the transfer target's partly frozen net is never compiled.
    compile: bool = False

    def check(self) -> None:
        super().check()
        check_depth(self.model, self.depth, "depth")


def check_depth(model: str, depth: int, key: str) -> None:
    """Depth 0 (no block after the first hidden layer) exists for the MLP only: a conv net's stage
    needs at least one block. Raises ConfigError('key: ...'), worded like a range error."""
    check(depth >= 1 or model == "mlp", key, f"must be >= 1, got {depth}")


def recipe_field(name: str, default: Any) -> Any:
    """A field holding the recipe's `name` under another key (the source CNN's `source_<name>`):
    its own default, the recipe's range."""
    bounds = bounds_of(ImageRecipe, name)
    return field(default=default, metadata={} if bounds is None else {BOUNDS: bounds})


def load_data(cfg: TrainingRecipe, ctx: Context) -> ImageData:
    """The recipe's data on the context's device: its classes, capped, with its validation split."""
    return load_image_data(cfg.dataset, ctx.data_dir, ctx.device, val_fraction=cfg.val_fraction, seed=cfg.seed,
                           classes=cfg.classes, max_train=cfg.max_train, max_val_test=cfg.max_val_test)
