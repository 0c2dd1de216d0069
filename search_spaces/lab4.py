"""Lab 4 search spaces (keys are `trainables.lab4.robustness.Lab4Config` fields).

Every eps is an L-inf radius in pixel units of [0, 1] (8/255 = 0.0314). One space serves both
profiles, so eps ranges span CIFAR's usual 1/255..16/255 and the larger radii that matter on 8x8
digits (0.05..0.3); pin a narrower value with `--set epsilon=0.0314` where only one is wanted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: trial processes need not import optuna
    import optuna

# ODIN's published grid (Liang et al. 2018): temperatures, and 21 input-step sizes in [0, 0.004].
ODIN_TEMPERATURES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
# The compared factors' values (the studies' cells in orchestrator/catalog/lab4.py are these).
FGSM_MODELS = ("mlp", "cnn")
TARGETS = tuple(range(10))  # the targeted attack's classes (digits, CIFAR-10)
ADV_MIXES = (0.0, 0.5, 1.0)  # adversarial fraction of each batch; 0: standard training, the baseline
# The OOD sets the ood study compares, each scored against the same model: the bundled ones (quick)
# and the real datasets (full); a profile runs those it can read (Profile.cells in the catalog).
QUICK_OOD_SETS = ("noise", "fakedata")
OOD_SETS = (*QUICK_OOD_SETS, "cifar100", "svhn")


def classifier(trial: optuna.Trial) -> None:
    """The plain training recipe of the model the post-hoc studies probe: optimizer, each with its own
    lr range (Adam on the quick profile's digits, SGD on the full profile's CIFAR-10, as in Lab 1)."""
    if trial.suggest_categorical("optimizer", ("adam", "sgd")) == "sgd":
        trial.suggest_float("lr", 1e-2, 2e-1, log=True)
    else:
        trial.suggest_float("lr", 1e-3, 1e-2, log=True)


def ood(trial: optuna.Trial) -> None:
    """The OOD set (a compared factor: every trial is one of the profile's cells), then ODIN's
    temperature and input-perturbation size, chosen on validation ID vs that set's OOD images."""
    trial.suggest_categorical("ood_set", OOD_SETS)
    trial.suggest_categorical("temperature", ODIN_TEMPERATURES)
    trial.suggest_float("odin_eps", 0.0, 0.004, step=0.0002)


def fgsm(trial: optuna.Trial) -> None:
    """Architecture of the attacked classifier and the headline eps (single-step success rate,
    iterative success within that budget); the whole accuracy-vs-eps grid is measured every trial.
    The full profile pins `model` to its ResNet-18 (Profile.pinned): there only eps is searched."""
    trial.suggest_categorical("model", FGSM_MODELS)
    trial.suggest_float("epsilon", 1 / 255, 0.3, log=True)


def adv_train(trial: optuna.Trial) -> None:
    """FGSM-RS training radius and the adversarial fraction of each batch (mix = 0: standard training)."""
    trial.suggest_float("epsilon", 2 / 255, 0.2, log=True)
    trial.suggest_categorical("mix", ADV_MIXES)


def targeted(trial: optuna.Trial) -> None:
    """Target class and L-inf budget of the iterative targeted attack."""
    trial.suggest_categorical("target", TARGETS)
    trial.suggest_float("epsilon", 1 / 255, 0.3, log=True)
