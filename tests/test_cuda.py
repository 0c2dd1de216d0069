"""The CUDA paths of the trainables, on a real GPU: bf16 autocast + channels_last by default, CUDA
graphs under `compile=true`, fused optimizers. Skipped without CUDA (CI has none); run on a lent GPU
machine with `pytest -m gpu tests/test_cuda.py` (needs only torch, transformers and peft there)."""
from __future__ import annotations

import math

import pytest
import torch

from trainables.context import LocalContext

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
LAB1 = dict(model="cnn", dataset="synthetic", width=16, depth=1, num_stages=2, epochs=4, batch_size=64,
            crop_pad=1, val_fraction=0.15)


def _finite(reports: list[dict[str, float]]) -> bool:
    return all(math.isfinite(v) for r in reports for v in r.values())


def test_lab1_defaults_train_in_bf16_channels_last_and_learn():
    from trainables.lab1.classifier import Lab1Config, build_model, train
    from trainables.training import Speed

    cfg = Lab1Config(**LAB1)
    assert Speed.for_model(build_model(cfg, (3, 8, 8), 10, (0.5,) * 3, (0.25,) * 3), CUDA) == \
        Speed(amp=True, channels_last=True)
    ctx = LocalContext(device=CUDA)
    metrics = train(cfg, ctx)
    assert _finite(ctx.reports) and metrics["val_acc"] > 0.2  # 10 synthetic classes: chance is 0.1
    assert ctx.reports[-1]["train_loss"] < ctx.reports[0]["train_loss"] - 0.1
    conv = next(v for v in ctx.last_state["model"].values() if v.ndim == 4)
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)


def test_lab1_compiled_with_cuda_graphs_matches_eager_accuracy():
    from trainables.lab1.classifier import Lab1Config, train

    eager, graphed = LocalContext(device=CUDA), LocalContext(device=CUDA)
    train(Lab1Config(**LAB1), eager)
    train(Lab1Config(**LAB1, compile=True), graphed)
    assert _finite(graphed.reports) and len(graphed.reports) == LAB1["epochs"]
    # Same seed, same data: bf16 rounding differs between fused and eager kernels, not the outcome.
    assert abs(graphed.reports[-1]["val_acc"] - eager.reports[-1]["val_acc"]) < 0.1


def test_lab4_adversarial_training_on_cuda():
    from trainables.lab4.robustness import Lab4Config, train

    ctx = LocalContext(device=CUDA)
    metrics = train(Lab4Config(task="adv-train", dataset="digits", width=8, epochs=5, epsilon=0.1,
                               eval_eps=0.1, eps_grid=(0.0, 0.1), pgd_steps=3, max_eval=128, co_batch=128), ctx)
    assert _finite(ctx.reports)
    assert metrics["test_acc"] > 0.5 and 0.0 <= metrics["val_robust_acc"] <= 1.0


def test_lab3_clip_lora_steps_in_bf16_on_cuda(tmp_path):
    from trainables.lab3.clip import ClipConfig, train

    ctx = LocalContext(device=CUDA, data_dir=tmp_path)
    metrics = train(ClipConfig(method="lora", lora_rank=4, lr=1e-2, shots=16, epochs=2), ctx)
    assert _finite(ctx.reports) and [r["epoch"] for r in ctx.reports] == [1, 2]
    assert 0.0 <= metrics["test_acc"] <= 1.0
