"""Lab 3 search spaces (keys are `trainables.lab3.sentiment.SentimentConfig` / `trainables.lab3.clip.ClipConfig` fields)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: trial processes need not import optuna
    import optuna

LORA_TARGETS = ["qv", "qkv", "qkvo", "all"]  # trainables.lab3.lora.PRESETS
# The compared factors' values (the studies' cells in orchestrator/catalog/lab3.py are these).
CLASSIFIERS = ("svm", "logreg")
LORA_RANKS = (1, 4, 16, 64)
PROMPTS = ("photo", "ensemble")
CLIP_TOWERS = ("vision", "text", "both")


def sentiment_baseline(trial: optuna.Trial) -> None:
    """Linear classifier on frozen [CLS] features: which one, how much regularisation."""
    trial.suggest_categorical("classifier", CLASSIFIERS)
    trial.suggest_float("C", 1e-3, 10.0, log=True)


def sentiment_finetune(trial: optuna.Trial) -> None:
    """Full fine-tuning recipe. The lr range covers DistilBERT (2e-5..1e-4) and the tiny model (~1e-3)."""
    trial.suggest_float("lr", 2e-5, 2e-3, log=True)
    trial.suggest_categorical("epochs", [2, 3, 4])
    trial.suggest_categorical("batch_size", [16, 32, 64])
    trial.suggest_categorical("weight_decay", [0.0, 0.01, 0.1])


def sentiment_lora(trial: optuna.Trial) -> None:
    """LoRA: rank, scale numerator alpha, which projections get adapters, lr (adapters want more than
    full fine-tuning: few parameters, zero-initialised B)."""
    trial.suggest_categorical("lora_rank", LORA_RANKS)
    trial.suggest_categorical("lora_alpha", [8.0, 16.0, 32.0])
    trial.suggest_categorical("lora_targets", LORA_TARGETS)
    trial.suggest_float("lr", 1e-4, 2e-2, log=True)


def clip_zeroshot(trial: optuna.Trial) -> None:
    """Prompt: the single template "a photo of a {}." or the template ensemble."""
    trial.suggest_categorical("prompt", PROMPTS)


def clip_lora(trial: optuna.Trial) -> None:
    """LoRA on CLIP's attention projections: which tower(s), rank 1..64, lr."""
    trial.suggest_categorical("lora_towers", CLIP_TOWERS)
    trial.suggest_int("lora_rank", 1, 64, log=True)
    trial.suggest_float("lr", 1e-4, 2e-2, log=True)
