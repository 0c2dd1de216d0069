"""Train once, probe many: the trained model that Lab 4's post-hoc trials (`ood`, `fgsm`, `targeted`)
probe. Their knobs (ODIN's temperature and step, attack eps, target class and budget) act after
training, so every trial of a study that shares the training settings and seed probes one model:

- `source_checkpoint` (a run's `checkpoint/model.pt`, downloaded and checked by the driver; a repeat
  with another seed, which draws another validation split, trains its own as below), else
- `source_cache` (a folder under the study's storage, seen by every node): the first trial to need
  the model takes the folder's lock, trains it and saves it; the others wait for the lock and load
  it. The training checkpoints each epoch there too, so a trial killed mid-training hands the
  next one a partly trained model, not a fresh start. Else
- no folder (in-process use): the trial trains the model itself.

Either way the weights are what the old train-then-probe trial had at its last epoch, so its
metrics are unchanged bit for bit (tests/test_lab4_shared.py).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, from_dict
from ..context import locked, read_model_file
from ..data import ImageData

POST_HOC = ("ood", "fgsm", "targeted")  # tasks whose trials only probe a trained model
# What the training of a post-hoc task never reads: the probes' knobs, adv-train's settings, and
# where the model comes from. Everything else (data, architecture, recipe, seed) makes the model.
PROBE_FIELDS = frozenset({
    "task", "ood_set", "score", "temperature", "odin_eps", "epsilon", "eps_grid", "attack_step", "attack_steps",
    "target", "max_eval", "mix", "alpha_ratio", "random_start", "pgd_steps", "eval_eps", "co_ratio", "co_gap",
    "co_batch", "source_run", "source_checkpoint", "source_cache"})
AE_FIELDS = ("ae_width", "ae_latent", "ae_lr")
# What must match between a given model and the study probing it (its data and its classes).
MUST_MATCH = ("dataset", "classes", "model", "width", "depth", "residual", "num_stages")
# What draws the validation split out of the training images (trainables/data.py): a model probed on
# another split would be validated on images it trained on.
SPLIT = ("seed", "val_fraction", "max_train", "max_val_test")


def needs_autoencoder(task: str) -> bool:
    """The `ae` score is an autoencoder's reconstruction error on ID images: ood needs one, and the
    plain training study trains one so that its model serves every post-hoc study."""
    return task in ("ood", "train")


def training_settings(cfg: Any) -> dict[str, Any]:
    """The settings that determine the trained model (a post-hoc task's probes left out)."""
    ae = needs_autoencoder(cfg.task)
    out = {f.name: getattr(cfg, f.name) for f in fields(cfg)
           if f.name not in PROBE_FIELDS and (ae or f.name not in AE_FIELDS)}
    return {**out, "autoencoder": ae}


def digest(cfg: Any) -> str:
    return hashlib.sha1(json.dumps(training_settings(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class Trained:
    """A trained classifier (and the autoencoder when the task needs one), with the metrics of its
    last training epoch and where it came from (`name`: what the trial's MLflow run records)."""

    model: nn.Module
    ae: nn.Module | None
    metrics: dict[str, float]
    name: str
    trained_here: bool = False


# ---------------------------------------------------------------------------------------- files
def save(path: Path, cfg: Any, model: nn.Module, ae: nn.Module | None, metrics: dict[str, float],
         extra: dict[str, Any] | None = None) -> None:
    """{"model", "config", "metrics"[, "ae"]} (the tracker's `model.pt` format plus the training's
    last metrics), written atomically: a reader on another node sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": _cpu(model.state_dict()), "config": asdict(cfg), "metrics": dict(metrics), **(extra or {})}
    if ae is not None:
        state["ae"] = _cpu(ae.state_dict())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read(path: str | Path) -> dict[str, Any]:
    """A saved model's contents; one-line FileNotFoundError / ValueError (callers add which file)."""
    return read_model_file(path)


def saved_config(ckpt: dict[str, Any], config_cls: Any) -> Any:
    """The config a checkpoint was trained with, as `config_cls` (unknown keys dropped)."""
    known = {f.name for f in fields(config_cls)}
    try:
        return from_dict(config_cls, {k: v for k, v in ckpt["config"].items() if k in known})
    except ConfigError as e:
        raise ValueError(f"checkpoint has a bad config ({e})") from None


def conflict(saved: Any, ckpt: dict[str, Any], wanted: Any) -> str | None:
    """Why a saved model cannot be probed by a study configured as `wanted`, or None: another
    dataset, other classes or another architecture (its inputs or outputs would not fit), or no
    autoencoder where the study's `ae` score needs one."""
    for key in MUST_MATCH:
        have, want = getattr(saved, key), getattr(wanted, key)
        if tuple(have) != tuple(want) if isinstance(want, tuple) else have != want:
            return f"it was trained with {key}={_show(have)}, the study probes {key}={_show(want)}"
    if needs_autoencoder(wanted.task) and "ae" not in ckpt:
        return "it has no autoencoder, which the ood study's `ae` score needs (use a model from an ood study)"
    if not same_split(saved, wanted):
        have = ", ".join(f"{k}={getattr(saved, k)}" for k in SPLIT)
        return (f"it was trained with {have}: another seed or split would validate it on images it trained on "
                f"(run with those values, e.g. --seed {saved.seed})")
    return None


def same_split(saved: Any, wanted: Any) -> bool:
    return all(getattr(saved, k) == getattr(wanted, k) for k in SPLIT)


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in state.items()}


# ---------------------------------------------------------------------------------------- the model a trial probes
def obtain(cfg: Any, data: ImageData, build: Any, train_model: Any) -> Trained:
    """The model `cfg`'s trial probes (see the module docstring). `build(cfg)` makes the untrained
    (classifier, autoencoder); `train_model(cfg, partial)` trains them (resuming from `partial`, a
    path, when given) and returns (classifier, autoencoder, last-epoch metrics)."""
    cache = cfg.source_cache
    if cfg.source_checkpoint:
        try:
            saved = saved_config(read(cfg.source_checkpoint), type(cfg))
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"model {cfg.source_run or cfg.source_checkpoint}: {e}") from None
        if same_split(saved, cfg):
            return _load(cfg, cfg.source_checkpoint, build, cfg.source_run or cfg.source_checkpoint)
        # A repeat with another seed (--repeats) draws another split: it gets a model of its own, with
        # the study's settings and its seed, trained once beside the given one (shared storage).
        cache = cache or str(Path(cfg.source_checkpoint).parent)
    if not cache:
        model, ae, metrics = train_model(cfg, None)
        return Trained(model, ae, metrics, "trained in this trial", trained_here=True)
    path = Path(cache) / f"model-{digest(cfg)}.pt"
    with locked(path.with_suffix(".lock")):  # one trial trains; the others wait here, then load
        if path.is_file():
            return _load(cfg, path, build, str(path))
        partial = path.with_suffix(".partial")
        model, ae, metrics = train_model(cfg, partial)
        save(path, _training_config(cfg), model, ae, metrics)
        partial.unlink(missing_ok=True)
        return Trained(model, ae, metrics, str(path), trained_here=True)


def _training_config(cfg: Any) -> Any:
    return replace(cfg, source_run="", source_checkpoint="", source_cache="")


def _load(cfg: Any, path: str | Path, build: Any, name: str) -> Trained:
    try:
        ckpt = read(path)
        if (reason := conflict(saved_config(ckpt, type(cfg)), ckpt, cfg)) is not None:
            raise ValueError(f"this trial cannot probe it: {reason}")
        model, ae = build(cfg)
        model.load_state_dict(ckpt["model"])
        if ae is not None:
            if "ae" not in ckpt:
                raise ValueError("it has no autoencoder, which the `ae` score needs")
            ae.load_state_dict(ckpt["ae"])
    except (KeyError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model {name}: the weights do not fit a {cfg.model}: {reason[:200]}") from None
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"model {name}: {e}") from None
    metrics = {k: float(v) for k, v in ckpt.get("metrics", {}).items()}
    return Trained(model, ae, metrics, name)
