"""Stand-ins for pretrained checkpoints, offline: tiny models given a short, seeded "pretraining".

A tiny model with random weights has nothing to transfer: frozen random [CLS] vectors are nearly
constant, and LoRA on a random base barely moves. So the quick profile first gives the tiny
DistilBERT a short supervised pretraining on a *related* source task (generated sentences without
the "A but B" construction, no label noise): it learns word polarity and negation, like a real
pretrained encoder knows words, but not the target task's order rule ("but": the second clause
decides). On the target data the frozen features are then decent but not enough, and fine-tuning or
LoRA has something to add: the lab's finding in miniature. (CLIP's stand-in lives in trainables/lab3/clip_models.py.)

Pretraining is seeded and independent of the trial, so every trial and study starts from the same
weights. It runs once per process and is cached as a file under the data folder (written atomically,
so concurrent trials at worst compute it twice).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

_MEMORY: dict[str, dict[str, torch.Tensor]] = {}
CACHE_DIR = "lab3-tiny"  # under the data folder


def cached_state(name: str, recipe: dict[str, Any], build: Callable[[], dict[str, torch.Tensor]],
                 data_dir: Path | None) -> dict[str, torch.Tensor]:
    """`build()`'s state dict, computed once per `recipe` (in memory, and on disk when data_dir is set)."""
    key = f"{name}-{hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]}"
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(data_dir) / CACHE_DIR / f"{key}.pt" if data_dir is not None else None
    state = None
    if path is not None and path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache file is rebuilt, never trusted
            state = None
    if state is None:
        threads = torch.get_num_threads()
        # One thread: the same weights bit for bit whatever the machine's thread count (summation
        # order changes with threads, and a few hundred steps amplify it); fastest for tiny models too.
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng():  # the trial's own random stream stays untouched
                state = build()
        finally:
            torch.set_num_threads(threads)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            torch.save(state, tmp)
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    _MEMORY[key] = state
    return state


# Source task of the tiny DistilBERT: 4,000 sentences, 300 steps of 32 at lr 2e-3 (~5 s on one core).
SENTIMENT_RECIPE = {"n": 4000, "seed": 777, "steps": 300, "batch": 32, "lr": 2e-3, "version": 1}


def pretrain_tiny_distilbert(tokenizer: Any, config: Any) -> dict[str, torch.Tensor]:
    """The encoder weights (DistilBertModel state dict) after the source-task pretraining."""
    from transformers import AutoModelForSequenceClassification

    from .text_models import generate_sentiment

    r = SENTIMENT_RECIPE
    torch.manual_seed(1234)
    model = AutoModelForSequenceClassification.from_config(config)
    source = generate_sentiment(r["n"], seed=r["seed"], contrast=False, noise=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"])
    rng = np.random.default_rng(r["seed"])
    model.train()
    for _ in range(r["steps"]):
        idx = rng.integers(0, r["n"], r["batch"])
        batch = tokenizer([source["text"][i] for i in idx], padding=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([source["label"][i] for i in idx])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.base_model.state_dict().items()}
