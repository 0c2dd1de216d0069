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


def _kill_first_trial_after_checkpoint(storage: Path, epoch: int, killed: list[int]) -> None:
    """Waits until some trial has written checkpoint `epoch`, then SIGKILLs that very trial's
    process (its pid is in the trial's result.json), so the retry has a checkpoint to resume from."""
    deadline = time.time() + 180
    while time.time() < deadline:
        for ckpt in storage.glob(f"*/run_trial_*/checkpoint_{epoch:06d}"):
            results = (ckpt.parent / "result.json").read_text().strip().splitlines()
            if results:
                pid = json.loads(results[-1])["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.2)


def test_killed_trial_is_retried_from_its_checkpoint(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_first_trial_after_checkpoint, args=(tmp_path / "ray_results", 3, killed))
    killer.start()
    rc = run_cli(tmp_path, "lab1", "--study", "residual-mlp", "--num-samples", "2", "--max-concurrent", "2",
                 "--max-failures", "2", "--set", "epochs=30", "depth=4")
    killer.join()
    assert rc == 0 and killed, "no trial was killed"
    df = runs(tmp_path, "lab1")
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 2 and set(children.status) == {"FINISHED"}
    assert children["tags.trial_id"].is_unique
    retried = children[children["tags.retries"].notna()]
    assert len(retried) == 1 and retried["tags.retries"].iloc[0] == "1"
    steps = [m.step for m in mlflow.MlflowClient(mlflow_uri(tmp_path)).get_metric_history(retried.run_id.iloc[0], "val_acc")]
    # Resumed from a checkpoint, not restarted: every epoch logged, none from scratch twice.
    assert set(steps) == set(range(1, 31)) and len(steps) <= 32
