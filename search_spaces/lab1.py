"""Lab 1 search spaces (keys are `trainables.lab1.Lab1Config` fields)."""
from __future__ import annotations

import optuna

DEPTHS = [1, 2, 4, 8, 16, 32]


def mlp_capacity(trial: optuna.Trial) -> None:
    """Width small/medium/large (the lab's 3/10/64 units), one or two hidden blocks."""
    trial.suggest_categorical("width", [3, 10, 64])
    trial.suggest_categorical("depth", [1, 2])
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)


def residual_mlp(trial: optuna.Trial) -> None:
    """Depth x residual flag: where does a plain MLP stop training, and does the skip fix it?"""
    trial.suggest_categorical("depth", DEPTHS)
    trial.suggest_categorical("residual", [False, True])
    trial.suggest_float("lr", 3e-4, 3e-3, log=True)


def residual_cnn(trial: optuna.Trial) -> None:
    """Blocks per stage x residual flag for the BasicBlock CNN."""
    trial.suggest_categorical("depth", [1, 2, 4, 8])
    trial.suggest_categorical("residual", [False, True])
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)


def resnet(trial: optuna.Trial) -> None:
    """ResNet-18 training recipe: optimizer with its own lr range, weight decay, batch size."""
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    if optimizer == "sgd":
        trial.suggest_float("lr", 1e-2, 2e-1, log=True)
    else:
        trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True)
    trial.suggest_categorical("batch_size", [64, 128, 256])
