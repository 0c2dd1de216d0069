"""Fault tolerance on one machine, the plain case: a trial process SIGKILLed mid-training is retried from
its last checkpoint. (Drivers killed at random moments and resumed, trial processes and nodes killed at
random on a cluster: tests/test_chaos.py.)"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import mlflow_uri, run_cli, runs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _kill_a_search_trial_mid_training(storage: Path, first: int, last: int, killed: list[str]) -> None:
    """SIGKILLs the process of the first search trial seen with its newest checkpoint between epochs
    `first` and `last` (its pid is in the trial's result.json), so the retry has a checkpoint to resume
    from and epochs left to train. A window, not one checkpoint: checkpoint_000003 lives only until the
    fifth is kept (num_to_keep=2), well under a second on an idle machine, and a killer that missed it
    used to kill a test-phase trial instead (`<name>-test`: no MLflow run of its own to tag)."""
    deadline = time.time() + 180
    while time.time() < deadline:
        for trial in storage.glob("*/run_trial_*"):
            if trial.parent.name.endswith("-test"):
                continue
            saved = [int(c.name.rsplit("_", 1)[1]) for c in trial.glob("checkpoint_*")]
            if not saved or not first <= max(saved) <= last or not (trial / "result.json").exists():
                continue
            results = (trial / "result.json").read_text().strip().splitlines()
            if results:
                os.kill(json.loads(results[-1])["pid"], signal.SIGKILL)
                killed.append(trial.name)
                return
        time.sleep(0.1)


def test_killed_trial_is_retried_from_its_checkpoint(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    killed: list[str] = []
    killer = threading.Thread(target=_kill_a_search_trial_mid_training, args=(tmp_path / "ray_results", 3, 20, killed))
    killer.start()
    rc = run_cli(tmp_path, "lab1", "--study", "residual-mlp", "--num-samples", "2", "--max-concurrent", "2",
                 "--max-failures", "2", "--set", "epochs=30", "depth=4")
    killer.join()
    assert rc == 0 and killed, "no trial was killed"
    df = runs(tmp_path, "lab1")
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 2 and set(children.status) == {"FINISHED"}
    assert children["tags.trial_id"].is_unique
    assert "tags.retries" in children, f"no trial run tagged as retried; killed {killed}"
    retried = children[children["tags.retries"].notna()]
    assert len(retried) == 1 and retried["tags.retries"].iloc[0] == "1", killed
    assert killed[0].startswith(f"run_trial_{retried['tags.trial_id'].iloc[0]}_")
    steps = [m.step for m in mlflow.MlflowClient(mlflow_uri(tmp_path)).get_metric_history(retried.run_id.iloc[0], "val_acc")]
    # Resumed from a checkpoint, not restarted: every epoch logged, none from scratch twice.
    assert set(steps) == set(range(1, 31)) and len(steps) <= 32
