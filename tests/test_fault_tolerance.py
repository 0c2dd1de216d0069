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
from tests.drivers import ATTEMPTS, ray_did_not_start, run_to_end

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


def _finished_trials(tmp_path: Path) -> set[str]:
    import sqlite3

    try:
        with sqlite3.connect(tmp_path / "mlflow.db") as con:
            return {t for (t,) in con.execute("SELECT t.value FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                                              "WHERE t.key = 'trial_id' AND r.status = 'FINISHED'")}
    except sqlite3.Error:
        return set()


def _interrupted_with_checkpoint(storage: Path, finished: set[str]) -> set[str]:
    """Trials (ids) not finished in MLflow that have a checkpoint Tune registered (one the driver
    wrote the history of: orchestrator.recovery)."""
    return {folder.name.split("_")[2] for folder in storage.glob("*/run_trial_*")
            if any(folder.glob("checkpoint_*/dla_history.json"))} - finished


def _first_results_after_restores(trial_folder: Path) -> list[int]:
    """The iteration of each result that came first after a restore from a checkpoint."""
    out = []
    for line in (trial_folder / "result.json").read_text().splitlines():
        r = json.loads(line)
        if r.get("iterations_since_restore") == 1 and r.get("training_iteration", 0) > 1:
            out.append(r["training_iteration"])
    return out


def test_resume_after_the_driver_was_killed(tmp_path):
    storage = tmp_path / "ray_results"
    for _ in range(ATTEMPTS):  # started again if its Ray did not come up (tests/drivers.py)
        driver = _cli(tmp_path, "first.log", "--num-samples", "4", "--max-concurrent", "2", "--set", "epochs=20",
                      "batch_size=32")
        try:
            # Killed once a trial has finished and another one is half-way, with a checkpoint.
            deadline = time.time() + 480
            while time.time() < deadline and driver.poll() is None:
                finished = _finished_trials(tmp_path)
                if finished and _interrupted_with_checkpoint(storage, finished):
                    break
                time.sleep(0.5)
            if ray_did_not_start(driver, tmp_path / "first.log"):
                continue
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=60)
            break
        finally:
            driver.kill()
    before = runs(tmp_path, "lab1")
    finished_before = set(before[before.status == "FINISHED"]["tags.trial_id"].dropna())
    finished_runs_before = set(before[(before.status == "FINISHED") & before["tags.mlflow.parentRunId"].notna()].run_id)
    interrupted = _interrupted_with_checkpoint(storage, finished_before)
    assert finished_before and interrupted, "the kill came too early or too late"
    assert "RUNNING" in set(before.status)  # what the dead driver left behind

    rc = run_to_end(lambda: _cli(tmp_path, "resumed.log", "--resume"), tmp_path / "resumed.log", timeout=600)
    assert rc == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    after = runs(tmp_path, "lab1")
    assert "RUNNING" not in set(after.status)
    children = after[after["tags.mlflow.parentRunId"].notna()]
    finished = children[children.status == "FINISHED"]
    assert len(finished) == 4 and finished["tags.trial_id"].is_unique      # every trial, each once
    assert finished_runs_before <= set(finished.run_id)                      # finished ones not rerun
    assert (children.status == "KILLED").sum() >= 1                          # the dead driver's runs
    parents = after[after["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1 and parents.status.iloc[0] == "FINISHED"
    # The interrupted trials went on from their checkpoints, not from epoch 1: Tune's first result
    # after the restore is past epoch 1, and each trial's run holds every epoch exactly once.
    for trial in interrupted:
        (folder,) = storage.glob(f"*/run_trial_{trial}_*")
        assert _first_results_after_restores(folder), (trial, (folder / "result.json").read_text()[-2000:])
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in finished.run_id:
        assert sorted(m.step for m in client.get_metric_history(run_id, "val_acc")) == list(range(1, 21))
