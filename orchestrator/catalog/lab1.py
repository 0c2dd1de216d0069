"""Lab 1 studies: MLP capacity, residual MLP/CNN over depth, ResNet-18 (then transfer and CAM)."""
from __future__ import annotations

from typing import Any

from search_spaces import lab1 as lab1_spaces
from trainables import lab1, plots

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

STUDIES = [
    Study("lab1", "mlp-capacity", "How does MLP width (3/10/64 units) limit accuracy?", lab1.train, lab1.Lab1Config,
          lab1_spaces.mlp_capacity, {"quick": _MLP_QUICK, "full": _MLP_FULL}, {"quick": 6, "full": 12},
          early_stopping=False, gpus_per_trial=0.25,
          compare=lambda rows: plots.metric_by(rows, "width", "val_acc", group="depth", log_x=True,
                                               title="best validation accuracy vs width"),
          datasets={"full": ("mnist",)}),
    Study("lab1", "residual-mlp", "Do residual connections keep deep MLPs trainable?", lab1.train, lab1.Lab1Config,
          lab1_spaces.residual_mlp, {"quick": {**_MLP_QUICK, "grad_norms": True}, "full": {**_MLP_FULL, "grad_norms": True}},
          {"quick": 10, "full": 24}, early_stopping=False, gpus_per_trial=0.25, compare=_depth_vs_residual,
          datasets={"full": ("mnist",)}),
    Study("lab1", "residual-cnn", "Do residual connections keep deep CNNs trainable (CIFAR-10)?", lab1.train,
          lab1.Lab1Config, lab1_spaces.residual_cnn, {"quick": {**_CNN_QUICK, "grad_norms": True},
                                                     "full": {**_CNN_FULL, "grad_norms": True}},
          {"quick": 8, "full": 16}, early_stopping=False, gpus_per_trial=0.25, compare=_depth_vs_residual,
          datasets={"full": ("cifar10",)}),
    Study("lab1", "resnet", "How well does ResNet-18 (CIFAR stem) train, and with which recipe?", lab1.train,
          lab1.Lab1Config, lab1_spaces.resnet,
          {"quick": {**_CNN_QUICK, "model": "resnet18", "epochs": 4},
           "full": {**_CNN_FULL, "model": "resnet18", "epochs": 30}},
          {"quick": 4, "full": 12}, early_stopping=True, grace_period=2, gpus_per_trial=0.5,
          compare=lambda rows: plots.metric_by(rows, "lr", "val_acc", group="optimizer",
                                               title="best validation accuracy vs lr"),
          datasets={"full": ("cifar10",)}),
]
