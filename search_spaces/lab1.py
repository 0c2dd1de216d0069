"""Lab 1 search spaces (keys are fields of `trainables.lab1.classifier.Lab1Config`, and of
`trainables.lab1.transfer.TransferConfig` and `trainables.lab1.cam.CamConfig` for transfer and cam)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: trial processes need not import optuna
    import optuna

# The compared factors' values (the studies' cells in orchestrator/catalog/lab1.py are these).
MLP_WIDTHS = (3, 10, 64)
DEPTHS = (1, 2, 4, 8, 16, 32)
CNN_DEPTHS = (1, 2, 4, 8)


def mlp_capacity(trial: optuna.Trial) -> None:
    """Width small/medium/large (the lab's 3/10/64 units) of the one hidden layer; lr tuned."""
    trial.suggest_categorical("width", MLP_WIDTHS)
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)


def residual_mlp(trial: optuna.Trial) -> None:
    """Depth x residual flag: where does a plain MLP stop training, and does the skip fix it?"""
    trial.suggest_categorical("depth", DEPTHS)
    trial.suggest_categorical("residual", [False, True])
    trial.suggest_float("lr", 3e-4, 3e-3, log=True)


def residual_cnn(trial: optuna.Trial) -> None:
    """Blocks per stage x residual flag for the BasicBlock CNN."""
    trial.suggest_categorical("depth", CNN_DEPTHS)
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


TRANSFER_VARIANTS = ["linear-svc", "knn", "head", "finetune", "scratch"]
CAM_METHODS = ["cam", "gradcam", "gradcam++"]


def transfer(trial: optuna.Trial) -> None:
    """Transfer variant, then only the knobs that variant has: the classifier's C or k for the
    scikit-learn ones; optimizer (each with its own lr range) for the trained ones; and how many
    of the last stages fine-tuning unfreezes."""
    variant = trial.suggest_categorical("variant", TRANSFER_VARIANTS)
    if variant == "linear-svc":
        trial.suggest_float("svc_c", 1e-3, 10.0, log=True)
    elif variant == "knn":
        trial.suggest_categorical("knn_k", [1, 3, 5, 10])
    else:
        if variant == "finetune":
            trial.suggest_int("unfreeze_stages", 1, 3)
        optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        if optimizer == "adam":
            trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        else:
            trial.suggest_float("lr", 1e-3, 3e-1, log=True)


def cam(trial: optuna.Trial) -> None:
    """Heat-map method; Grad-CAM methods also choose the stage they explain (CAM has one: the last)."""
    method = trial.suggest_categorical("method", CAM_METHODS)
    if method != "cam":
        trial.suggest_categorical("layer", ["last", "previous"])
