"""LoRA through PEFT, for DistilBERT/BERT sequence classifiers and CLIP: which modules, how many parameters.

LoRA (Hu et al. 2021) freezes W (d_out x d_in) and learns W + (alpha / r) * B A with A (r x d_in),
B (d_out x r), B initialised to zero: r * (d_in + d_out) trainable parameters per adapted Linear,
plus whatever head is trained whole (`modules_to_save`).
Targets are named by preset (the searched `lora_targets`): "qv" (the LoRA paper's choice), "qkv",
"qkvo" (all attention projections) or "all" (attention and the feed-forward Linears); for CLIP also by
tower ("vision", "text", "both"). They become one regular expression that PEFT full-matches against
module names, so an adapter lands exactly on the named modules and nowhere else.
"""
from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

Preset = Literal["qv", "qkv", "qkvo", "all"]
PRESETS: tuple[str, ...] = ("qv", "qkv", "qkvo", "all")
Towers = Literal["vision", "text", "both"]

# model_type -> role -> regex of the module name after the layer prefix
ROLES: dict[str, dict[str, str]] = {
    "distilbert": {"q": r"attention\.q_lin", "k": r"attention\.k_lin", "v": r"attention\.v_lin",
                   "o": r"attention\.out_lin", "ffn": r"ffn\.lin[12]"},
    "bert": {"q": r"attention\.self\.query", "k": r"attention\.self\.key", "v": r"attention\.self\.value",
             "o": r"attention\.output\.dense", "ffn": r"(?:intermediate|output)\.dense"},
    "clip": {"q": r"self_attn\.q_proj", "k": r"self_attn\.k_proj", "v": r"self_attn\.v_proj",
             "o": r"self_attn\.out_proj", "ffn": r"mlp\.fc[12]"},
}
LAYER = {"distilbert": r"transformer\.layer\.\d+", "bert": r"encoder\.layer\.\d+", "clip": r"encoder\.layers\.\d+"}
# Heads trained whole next to the adapters: new in a fine-tuning model, so never "pretrained".
HEADS = {"distilbert": ["pre_classifier", "classifier"], "bert": ["classifier"], "clip": []}
TOWERS = {"vision": ["vision_model"], "text": ["text_model"], "both": ["vision_model", "text_model"]}


def roles_of(preset: str) -> list[str]:
    if preset not in PRESETS:
        raise ValueError(f"lora_targets: expected one of {list(PRESETS)}, got {preset!r}")
    return {"qv": ["q", "v"], "qkv": ["q", "k", "v"], "qkvo": ["q", "k", "v", "o"],
            "all": ["q", "k", "v", "o", "ffn"]}[preset]


def target_regex(model_type: str, preset: str, towers: str | None = None) -> str:
    """The full-match pattern for PEFT's `target_modules` (any prefix, e.g. 'distilbert.' or 'base_model.')."""
    if model_type not in ROLES:
        raise ValueError(f"LoRA presets know {list(ROLES)}, not model type {model_type!r}")
    roles = "|".join(ROLES[model_type][r] for r in roles_of(preset))
    tower = ""
    if model_type == "clip":
        tower = "(?:" + "|".join(TOWERS[towers or "both"]) + r")\."
    return rf"(?:.*\.)?{tower}{LAYER[model_type]}\.(?:{roles})"


def apply_lora(model: nn.Module, *, rank: int, alpha: float, targets: str, dropout: float = 0.0,
               towers: str | None = None, init_weights: bool = True) -> nn.Module:
    """Wraps `model` in a PEFT model with LoRA adapters on the preset's modules; everything else is
    frozen except the task head (`HEADS`). `init_weights=False` starts B random (tests only)."""
    from peft import LoraConfig, get_peft_model

    model_type = model.config.model_type
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=target_regex(model_type, targets, towers),
                        modules_to_save=HEADS[model_type] or None, init_lora_weights=init_weights)
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5 (FutureWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


def param_counts(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameters (total = frozen base + adapters + trainable head copies)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": float(trainable), "total_params": float(total),
            "trainable_fraction": trainable / max(total, 1)}


def adapted_modules(model: nn.Module) -> list[str]:
    """Names of the modules that carry a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (adapters and heads, or everything for a full fine-tune): the
    checkpoint stays small for LoRA and still restores the model exactly onto the fixed base."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}
