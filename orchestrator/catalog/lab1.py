"""Lab 1 studies: MLP capacity, residual MLP/CNN over depth, ResNet-18, then transfer and CAM."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from search_spaces import lab1 as lab1_spaces
from trainables import plots
from trainables.lab1 import cam, classifier, figures as lab1_figures, source as lab1_source, transfer

from ..studies import Study


def _depth_vs_residual(rows: list[dict]) -> Any:
    return plots.metric_by(rows, "depth", "val_acc", group="residual", log_x=True,
                           title="best validation accuracy vs depth")


# Quick profile: digits (1,797 real 8x8 images) in place of MNIST and CIFAR-10.
_MLP_QUICK = {"dataset": "digits", "epochs": 10, "batch_size": 64, "width": 64, "val_fraction": 0.15}
_MLP_FULL = {"dataset": "mnist", "epochs": 20, "batch_size": 128, "width": 128, "val_fraction": 5000 / 60000}
_CNN_QUICK = {"model": "cnn", "dataset": "digits", "epochs": 8, "batch_size": 64, "width": 16, "crop_pad": 1,
              "flip": False, "val_fraction": 0.15}  # digits are not mirror-symmetric: no flips
_CNN_FULL = {"model": "cnn", "dataset": "cifar10", "epochs": 30, "batch_size": 256, "width": 32, "crop_pad": 4,
             "flip": True, "optimizer": "sgd", "weight_decay": 5e-4, "val_fraction": 0.1}

# ---------------------------------------------------------------- transfer and CAM: the source CNN
# Quick: a CNN trained on digits 0-4, reused on digits 5-9 with only a few training images (the
# regime where transfer matters); full: the best CIFAR-10 CNN, reused on CIFAR-100.
_OWN_SOURCE_QUICK = {"source_dataset": "digits", "source_model": "cnn", "source_width": 32, "source_depth": 1,
                     "source_residual": True, "source_num_stages": 3, "source_epochs": 20, "source_batch_size": 64,
                     "source_lr": 3e-3, "source_optimizer": "adam", "source_crop_pad": 1, "source_flip": False,
                     "source_val_fraction": 0.15}
_OWN_SOURCE_FULL = {"source_dataset": "cifar10", "source_model": "cnn", "source_width": 32, "source_depth": 2,
                    "source_residual": True, "source_num_stages": 3, "source_epochs": 30, "source_batch_size": 256,
                    "source_lr": 0.05, "source_optimizer": "sgd", "source_weight_decay": 5e-4, "source_crop_pad": 4,
                    "source_flip": True, "source_val_fraction": 0.1}
_TRANSFER_QUICK = {**_OWN_SOURCE_QUICK, "source_classes": (0, 1, 2, 3, 4), "dataset": "digits",
                   "classes": (5, 6, 7, 8, 9), "max_train": 20, "val_fraction": 0.15, "epochs": 15, "batch_size": 32,
                   "crop_pad": 1, "flip": False}
_TRANSFER_FULL = {**_OWN_SOURCE_FULL, "dataset": "cifar100", "classes": (), "max_train": 0, "val_fraction": 0.1,
                  "epochs": 15, "batch_size": 256, "crop_pad": 4, "flip": True, "weight_decay": 5e-4}
# CAM quick: two stages, so the last maps of an 8x8 digit are 4x4 (three stages would leave 2x2).
_CAM_QUICK = {**_OWN_SOURCE_QUICK, "source_width": 16, "source_num_stages": 2, "source_epochs": 5,
              "images_per_class": 3, "mistakes": 6, "max_eval": 300}
_CAM_FULL = {**_OWN_SOURCE_FULL, "images_per_class": 4, "mistakes": 8, "max_eval": 1000}


def _created_dirs(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _fetch(lookup: Any, run_id: str, conflict: Callable[[Any, Any], str | None]) -> tuple[str | None, str | None]:
    """Downloads and checks a run's model.pt: (path, None) when usable, (None, why not) when it
    conflicts with the study. Missing run / checkpoint or an unreadable one raise (one line)."""
    dest = lookup.workdir / f"source-{run_id}"
    new = _created_dirs(dest)
    try:
        path = lookup.download_model(run_id, dest)  # no progress bar: errors stay one line
        cfg, model = lab1_source.load_checkpoint_model(path)
        reason = conflict(cfg, model)
    except (ValueError, FileNotFoundError) as e:
        _remove(new, dest)
        raise type(e)(f"source run {run_id}: {e}") from None
    if reason is not None:
        _remove(new, dest)
        return None, f"run {run_id} cannot be the source: {reason}"
    classes = f" classes {','.join(map(str, cfg.classes))}" if cfg.classes else ""
    print(f"source model: MLflow run {run_id} ({cfg.model} trained on {cfg.dataset}{classes})", flush=True)
    return str(Path(path).resolve()), None


def _remove(new: list[Path], dest: Path) -> None:
    """Leaves nothing behind of a rejected download: the folders it created, or its own folder."""
    shutil.rmtree(new[-1] if new else dest, ignore_errors=True)


def _prepare_source(base: dict[str, Any], lookup: Any, candidates: Sequence[Sequence[str]],
                    conflict: Callable[[Any, Any], str | None]) -> dict[str, Any]:
    """Resolves the source CNN before the study: `--set source_run=ID` (must exist and fit), else
    the best trial of the latest study in `candidates` that fits, else none: the trials then train
    one (seeded, the first saves it in the study's folder for the others)."""
    if base.get("source_checkpoint") and not base.get("source_run"):  # a path given with --set
        given = base["source_checkpoint"]
        try:
            cfg, model = lab1_source.load_checkpoint_model(given)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"source_checkpoint {given}: {e}") from None
        if (reason := conflict(cfg, model)) is not None:
            raise ValueError(f"source_checkpoint {given} cannot be the source: {reason}")
        return {**base, "source_checkpoint": str(Path(given).resolve())}
    if base.get("source_run"):
        path, reason = _fetch(lookup, base["source_run"], conflict)
        if reason is not None:
            raise ValueError(reason)
        return {**base, "source_checkpoint": path}
    tried: list[str] = []
    for studies in candidates:
        run_id = lookup.latest_best_run("lab1", list(studies))
        if run_id is None or run_id in tried:
            continue
        tried.append(run_id)
        path, reason = _fetch(lookup, run_id, conflict)
        if path is not None:
            return {**base, "source_run": run_id, "source_checkpoint": path}
        print(f"{reason}; looking further", flush=True)
    print("no source model in MLflow fits: each trial trains the source CNN first (seeded; shared through "
          f"{lookup.workdir})", flush=True)
    return {**base, "source_run": "", "source_checkpoint": "", "source_cache": str(Path(lookup.workdir).resolve())}


def prepare_transfer(base: dict[str, Any], lookup: Any) -> dict[str, Any]:
    def conflict(cfg: Any, model: Any) -> str | None:
        return lab1_source.transfer_conflict(cfg, model.state_dict(), base["dataset"], tuple(base.get("classes", ())))

    return _prepare_source(base, lookup, [("residual-cnn", "resnet"), ("residual-cnn",), ("resnet",)], conflict)


def prepare_cam(base: dict[str, Any], lookup: Any) -> dict[str, Any]:
    # "The trained CNN" first; a ResNet-18 on 8x8 digits ends in 1x1 maps (rejected by cam_conflict).
    return _prepare_source(base, lookup, [("residual-cnn",), ("resnet",)], lab1_source.cam_conflict)



STUDIES = [
    Study("lab1", "mlp-capacity", "How does MLP width (3/10/64 units) limit accuracy?", classifier.train, classifier.Lab1Config,
          lab1_spaces.mlp_capacity, {"quick": _MLP_QUICK, "full": _MLP_FULL}, {"quick": 6, "full": 12},
          early_stopping=False, gpus_per_trial=0.25,
          compare=lambda rows: plots.metric_by(rows, "width", "val_acc", group="depth", log_x=True,
                                               title="best validation accuracy vs width"),
          datasets={"full": ("mnist",)}, report_by=("width", "depth"),
          references="MNIST MLP, 1 hidden layer: 3 units ~70%, 10 units ~93%, 64 units ~97.4% test."),
    Study("lab1", "residual-mlp", "Do residual connections keep deep MLPs trainable?", classifier.train, classifier.Lab1Config,
          lab1_spaces.residual_mlp, {"quick": {**_MLP_QUICK, "grad_norms": True}, "full": {**_MLP_FULL, "grad_norms": True}},
          {"quick": 10, "full": 24}, early_stopping=False, gpus_per_trial=0.25, compare=_depth_vs_residual,
          datasets={"full": ("mnist",)}, report_by=("depth", "residual"),
          references="plain MLP collapses to ~11% (chance) at depth >= 8-16 while the residual MLP stays ~94-98% "
                     "at depth 32-50."),
    Study("lab1", "residual-cnn", "Do residual connections keep deep CNNs trainable (CIFAR-10)?", classifier.train,
          classifier.Lab1Config, lab1_spaces.residual_cnn, {"quick": {**_CNN_QUICK, "grad_norms": True},
                                                     "full": {**_CNN_FULL, "grad_norms": True}},
          {"quick": 8, "full": 16}, early_stopping=False, gpus_per_trial=0.25, compare=_depth_vs_residual,
          datasets={"full": ("cifar10",)}, report_by=("depth", "residual"),
          references="CIFAR-10 plain CNN accuracy falls with depth (76.6% -> 27.5% from 2-2-2-2 to 5-6-8-5 stages) "
                     "while residual stays ~78-86% (ResNet-20..56: plain 82.1 -> 73.8%, residual ~85.2-85.8%)."),
    Study("lab1", "resnet", "How well does ResNet-18 (CIFAR stem) train, and with which recipe?", classifier.train,
          classifier.Lab1Config, lab1_spaces.resnet,
          {"quick": {**_CNN_QUICK, "model": "resnet18", "epochs": 4},
           "full": {**_CNN_FULL, "model": "resnet18", "epochs": 30}},
          {"quick": 4, "full": 12}, early_stopping=True, grace_period=2, gpus_per_trial=0.5,
          compare=lambda rows: plots.metric_by(rows, "lr", "val_acc", group="optimizer",
                                               title="best validation accuracy vs lr"),
          datasets={"full": ("cifar10",)}, report_by=("optimizer",),
          references="ResNet-18 from scratch on CIFAR-10: ~85-95% depending on epochs."),
    Study("lab1", "transfer", "Do CIFAR-10 features transfer to CIFAR-100: frozen + SVM/kNN, new head, fine-tuning?",
          transfer.train, transfer.TransferConfig, lab1_spaces.transfer,
          {"quick": _TRANSFER_QUICK, "full": _TRANSFER_FULL}, {"quick": 8, "full": 16},
          early_stopping=False, gpus_per_trial=0.5, compare=lab1_figures.transfer_comparison,
          datasets={"full": ("cifar10", "cifar100")}, prepare=prepare_transfer, report_by=("variant",),
          references="CIFAR-100 transfer from a CIFAR-10 CNN: linear SVM on features ~23-42%, fine-tuning ~40-55%."),
    Study("lab1", "cam", "Where does the trained CNN look? CAM vs Grad-CAM heat maps, and how faithful they are",
          cam.train, cam.CamConfig, lab1_spaces.cam, {"quick": _CAM_QUICK, "full": _CAM_FULL},
          {"quick": 5, "full": 5}, metric="val_faithfulness", early_stopping=False, gpus_per_trial=0.25,
          compare=lab1_figures.cam_comparison, datasets={"full": ("cifar10",)}, prepare=prepare_cam,
          report_by=("method",), report_metrics=("val_faithfulness",)),
]
