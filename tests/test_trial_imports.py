"""A trial process imports only its own lab: a fresh interpreter imports the lab's catalog (as a trial
process does), runs one tiny trial of the lab in-process, and must not have loaded another lab's
package or heavy dependencies (transformers, peft and grad-cam cost seconds of start-up per trial)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TRIALS = {
    "lab1": ("from trainables.lab1.classifier import Lab1Config, train",
             "Lab1Config(dataset='digits', epochs=1, max_train=200)"),
    "lab3": ("from trainables.lab3.sentiment import SentimentConfig, train",
             "SentimentConfig(method='finetune', model='tiny', max_train=64, epochs=1)"),
    "lab4": ("from trainables.lab4.robustness import Lab4Config, train",
             "Lab4Config(task='fgsm', model='mlp', width=16, epochs=1, eps_grid=(0.0, 0.1), attack_steps=5, "
             "attack_step=0.05, max_eval=64)"),
}
NOT_LOADED = {
    "lab1": ("transformers", "peft", "pytorch_grad_cam", "trainables.lab3", "trainables.lab4", "mlflow"),
    "lab3": ("pytorch_grad_cam", "trainables.lab1", "trainables.lab4", "mlflow"),
    "lab4": ("transformers", "peft", "pytorch_grad_cam", "trainables.lab1", "trainables.lab3", "mlflow"),
}

SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
import orchestrator.catalog.{lab}
from trainables.context import LocalContext
{imports}
ctx = LocalContext()
train({config}, ctx)
assert ctx.finished
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(lab: str) -> list[str]:
    imports, config = TRIALS[lab]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLA_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(lab=lab, imports=imports, config=config)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Lab 3's trial is slow (~20 s of CPU: transformers, and the tiny DistilBERT's seeded pretraining);
# the import-linter contracts (tests/test_architecture.py) cover its imports statically meanwhile.
@pytest.mark.parametrize("lab", ["lab1", pytest.param("lab3", marks=pytest.mark.slow), "lab4"])
def test_a_trial_process_loads_only_its_own_lab(lab):
    modules = loaded_modules(lab)
    assert f"trainables.{lab}" in modules
    leaked = sorted(m for m in modules for banned in NOT_LOADED[lab] if m == banned or m.startswith(banned + "."))
    assert leaked == [], f"a {lab} trial loaded {leaked[:10]}"
