"""The trained CNN that Lab 1's transfer and CAM studies start from.

Either a checkpoint logged by an architecture study (`checkpoint/model.pt` of its best trial: the
state dict and the resolved `Lab1Config`, read back with `weights_only=True`; the driver downloads
it and puts its path in `source_checkpoint`), or, when there is none, a CNN trained here with the
`source_*` fields (seeded, so every trial of a study trains the same one; cached per process, so a
reused Tune actor trains it once).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import Config, ConfigError, check, field_names, from_dict
from ..context import Context, LocalContext, locked, read_model_file
from ..data import STATS, Dataset
from ..models import ConvNet, build_model
from ..recipe import Optimizer, check_depth, recipe_field
from .classifier import Lab1Config
from .classifier import train as train_lab1

CONV_MODELS = ("cnn", "resnet18")
IMAGE_SIZE = {"digits": 8, "synthetic": 8, "mnist": 28, "cifar10": 32, "cifar100": 32, "svhn": 32}  # pixels


@dataclass(frozen=True)
class SourceFields(Config):
    """Where the source CNN comes from (shared by the transfer and CAM configs)."""

    source_run: str = ""                    # MLflow run id (--set source_run=...); the driver resolves it
    source_checkpoint: str = ""             # absolute path of that run's model.pt, filled in by the driver
    source_cache: str = ""                  # folder shared by the study's trials (driver-set): the first
                                            # trial to train the source saves it there, later ones load it
    # Used only when there is no checkpoint: the CNN trained here first, with Lab 1's recipe
    # (trainables/recipe.py): each source_X is the recipe's X, with X's range.
    source_dataset: Dataset = "digits"
    source_classes: tuple[int, ...] = recipe_field("classes", ())  # () = all classes of source_dataset
    source_model: Literal["cnn", "resnet18"] = "cnn"
    source_width: int = recipe_field("width", 16)            # channels of the first stage
    source_depth: int = recipe_field("depth", 1)             # blocks per stage
    source_residual: bool = True
    source_num_stages: int = recipe_field("num_stages", 3)
    source_epochs: int = recipe_field("epochs", 10)
    source_batch_size: int = recipe_field("batch_size", 64)
    source_lr: float = recipe_field("lr", 3e-3)
    source_optimizer: Optimizer = "adam"
    source_weight_decay: float = recipe_field("weight_decay", 0.0)
    source_crop_pad: int = recipe_field("crop_pad", 1)       # random-crop padding in pixels
    source_flip: bool = False
    source_val_fraction: float = recipe_field("val_fraction", 0.15)

    def check(self) -> None:
        super().check()
        check(self.source_run == "" or self.source_run.strip() == self.source_run, "source_run",
              "must be a run id without spaces")
        check_depth(self.source_model, self.source_depth, "source_depth")


_WHERE = ("source_run", "source_checkpoint", "source_cache")  # the SourceFields that are not the recipe's


def source_config(cfg: SourceFields, seed: int) -> Lab1Config:
    """The Lab1Config of the CNN trained here when no checkpoint is given: each source_X as X."""
    recipe = {f.name.removeprefix("source_"): getattr(cfg, f.name) for f in fields(SourceFields)
              if f.name not in _WHERE}
    return Lab1Config(**recipe, seed=seed)


def in_channels(dataset: str) -> int:
    return len(STATS[dataset][0])


# ---------------------------------------------------------------- checkpoints
def read_checkpoint(path: str | Path) -> tuple[Lab1Config, dict[str, torch.Tensor]]:
    """(config, state dict) of a Lab 1 checkpoint. One-line errors, without the path (callers say
    which checkpoint): FileNotFoundError when missing, ValueError when it is not a usable one."""
    ckpt = read_model_file(path, "Lab 1")
    known = set(field_names(Lab1Config))
    try:
        cfg = from_dict(Lab1Config, {k: v for k, v in ckpt["config"].items() if k in known})
    except ConfigError as e:
        raise ValueError(f"checkpoint has a bad config ({e})") from None
    if cfg.model not in CONV_MODELS:
        raise ValueError(f"the model is a {cfg.model}; transfer and CAM need one of {', '.join(CONV_MODELS)}")
    return cfg, ckpt["model"]


def write_checkpoint_file(path: Path, cfg: Lab1Config, state: dict[str, torch.Tensor]) -> None:
    """Saves {"model", "config"} (the tracker's format) atomically: a concurrent reader sees the
    whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"model": state, "config": asdict(cfg)}, tmp)
    os.replace(tmp, path)


def model_from_state(cfg: Lab1Config, state: dict[str, torch.Tensor]) -> ConvNet:
    """Rebuilds the architecture the config describes and loads the weights (strict)."""
    try:
        channels, classes = state["stem.0.weight"].shape[1], state["head.weight"].shape[0]
        mean, std = state["normalize.mean"].flatten().tolist(), state["normalize.std"].flatten().tolist()
        model = build_model(cfg, (channels, IMAGE_SIZE[cfg.dataset], IMAGE_SIZE[cfg.dataset]), classes, mean, std)
        model.load_state_dict(state)
    except (KeyError, RuntimeError, AttributeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"source weights do not fit a {cfg.model} (width={cfg.width}, depth={cfg.depth}, "
                         f"num_stages={cfg.num_stages}): {reason[:200]}") from None
    return model  # type: ignore[return-value]


def load_checkpoint_model(path: str) -> tuple[Lab1Config, ConvNet]:
    cfg, state = read_checkpoint(path)
    return cfg, model_from_state(cfg, state)


# ---------------------------------------------------------------- compatibility (checked in the driver)
def transfer_conflict(src: Lab1Config, state: dict[str, torch.Tensor], target: str,
                      target_classes: tuple[int, ...]) -> str | None:
    """Why a source cannot be used for transfer to (target, target_classes), or None.

    A source trained on the same dataset must not have seen the target's classes: its training
    images would include the target's validation and test images (the splits differ)."""
    channels = state["stem.0.weight"].shape[1]
    if channels != in_channels(target):
        return f"its {src.dataset} inputs have {channels} channel(s), {target} has {in_channels(target)}"
    if src.dataset == target:
        if not src.classes or not target_classes or set(src.classes) & set(target_classes):
            seen = f"{target} classes {','.join(map(str, src.classes))}" if src.classes else f"all {target} classes"
            return f"it was trained on {seen}, which overlap the target classes (their test images would leak)"
    return None


def cam_conflict(src: Lab1Config, model: ConvNet) -> str | None:
    """A CAM needs last feature maps larger than 1x1 (else the map is one constant value)."""
    size = IMAGE_SIZE[src.dataset]
    with torch.no_grad():
        maps = model.eval().feature_maps(torch.zeros(1, model.stem[0].in_channels, size, size))
    if min(maps.shape[-2:]) < 2:
        return f"its last feature maps on {size}x{size} {src.dataset} images are {tuple(maps.shape[-2:])}"
    return None


# ---------------------------------------------------------------- the source model in a trial
_TRAINED: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, float]]] = {}


def train_source(src: Lab1Config, ctx: Context) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Trains the source CNN with Lab 1's own loop (seeded); (CPU state dict, its final metrics)."""
    key = (tuple(sorted(asdict(src).items())), str(ctx.device), str(ctx.data_dir))
    if key not in _TRAINED:
        inner = LocalContext(device=ctx.device, data_dir=ctx.data_dir)
        metrics = train_lab1(src, inner)
        assert inner.last_state is not None
        state = {k: v.detach().cpu().clone() for k, v in inner.last_state["model"].items()}
        _TRAINED[key] = (state, {f"source_{k}": float(metrics[k]) for k in ("val_acc", "test_acc")})
    return _TRAINED[key]


def obtain_source(cfg: SourceFields, seed: int, ctx: Context, *, weights: bool = True
                  ) -> tuple[Lab1Config, ConvNet, dict[str, float]]:
    """The source CNN (config, model on CPU, metrics of its training if it was trained here).
    `weights=False` builds the architecture only (a from-scratch baseline, or a resumed trial)."""
    if cfg.source_checkpoint:
        try:
            src, state = read_checkpoint(cfg.source_checkpoint)
            return src, model_from_state(src, state), {}
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"source_checkpoint {cfg.source_checkpoint}: {e}") from None
    src = source_config(cfg, seed)
    if not weights:
        torch.manual_seed(seed)
        data_stats = STATS[src.dataset]
        classes = len(src.classes) if src.classes else _num_classes(src.dataset)
        model = build_model(src, (in_channels(src.dataset), IMAGE_SIZE[src.dataset], IMAGE_SIZE[src.dataset]),
                            classes, data_stats[0], data_stats[1])
        return src, model, {}  # type: ignore[return-value]
    if not cfg.source_cache:
        state, metrics = train_source(src, ctx)
        return src, model_from_state(src, state), dict(metrics)
    cached = Path(cfg.source_cache) / f"source-{_digest(src)}.pt"
    with locked(cached.with_suffix(".lock")):  # the first trial trains it, the others wait and load it
        if cached.is_file():
            return src, model_from_state(src, read_checkpoint(cached)[1]), {}
        state, metrics = train_source(src, ctx)
        write_checkpoint_file(cached, src, state)
    return src, model_from_state(src, state), dict(metrics)


def _digest(src: Lab1Config) -> str:
    return hashlib.sha1(json.dumps(asdict(src), sort_keys=True).encode()).hexdigest()[:12]


def _num_classes(dataset: str) -> int:
    return 100 if dataset == "cifar100" else 10


def describe(src: Lab1Config) -> dict[str, Any]:
    """The source's architecture and data, as plain values (for the trial's files)."""
    return {k: getattr(src, k) for k in ("model", "dataset", "classes", "width", "depth", "residual", "num_stages")}
