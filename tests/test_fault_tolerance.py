"""Fault tolerance on one machine: a trial process SIGKILLed mid-training is retried from its last
checkpoint; a SIGKILLed driver is resumed with --resume without rerunning finished trials."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import LOCAL_RAY, mlflow_uri, run_cli, runs

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
                 "--max-failures", "2", "--set", "epochs=60", "depth=4")
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
    assert set(steps) == set(range(1, 61)) and len(steps) <= 62


def _cli(tmp_path: Path, log: str, *args: str) -> subprocess.Popen:
    # Output to a file: an unread pipe would fill up and block the driver.
    out = open(tmp_path / log, "w")
    # An explicit --mlflow-uri: an earlier in-process test may have left MLFLOW_TRACKING_URI set.
    return subprocess.Popen([sys.executable, str(REPO / "orchestrator" / "run.py"), "lab1", "--study", "residual-mlp",
                             "--quiet", "--mlflow-uri", mlflow_uri(tmp_path), *LOCAL_RAY, *args], cwd=tmp_path, stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def _children(tmp_path: Path):
    import sqlite3

    db = tmp_path / "mlflow.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT r.status FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                               "WHERE t.key = 'mlflow.parentRunId'").fetchall()
    except sqlite3.Error:
        return []


def test_resume_after_the_driver_was_killed(tmp_path):
    driver = _cli(tmp_path, "first.log", "--num-samples", "4", "--max-concurrent", "2", "--set", "epochs=20")
    try:
        deadline = time.time() + 480
        while time.time() < deadline and sum(s == "FINISHED" for (s,) in _children(tmp_path)) < 1:
            time.sleep(0.5)
        assert sum(s == "FINISHED" for (s,) in _children(tmp_path)) >= 1, "no trial finished before the kill"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        driver.kill()
    before = runs(tmp_path, "lab1")
    finished_before = set(before[before.status == "FINISHED"]["tags.trial_id"].dropna())
    assert "RUNNING" in set(before.status)  # what the dead driver left behind

    resumed = _cli(tmp_path, "resumed.log", "--resume")
    resumed.wait(timeout=600)
    assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    after = runs(tmp_path, "lab1")
    assert "RUNNING" not in set(after.status)
    children = after[after["tags.mlflow.parentRunId"].notna()]
    finished = children[children.status == "FINISHED"]
    assert len(finished) == 4 and finished["tags.trial_id"].is_unique      # every trial, each once
    assert finished_before <= set(finished["tags.trial_id"])                 # finished ones not rerun
    assert (children.status == "KILLED").sum() >= 1                          # the dead driver's runs
    parents = after[after["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1 and parents.status.iloc[0] == "FINISHED"
