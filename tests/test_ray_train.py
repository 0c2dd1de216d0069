"""Trials under Ray Train: DDP across 2 CPU workers (gloo), and the forced TorchTrainer backend."""
from __future__ import annotations

import pytest

from tests.conftest import child_runs, mlflow_uri, run_cli

pytestmark = pytest.mark.slow


def test_two_worker_trial_runs_ddp_with_replicas_in_sync(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = run_cli(tmp_path, "lab1", "--study", "residual-mlp", "--num-samples", "1", "--workers-per-trial", "2",
                 "--set", "epochs=2", "depth=2", "residual=true")  # the cell that learns in 2 epochs
    assert rc == 0
    child = child_runs(tmp_path, "lab1").iloc[0]
    assert child.status == "FINISHED"
    assert child["tags.world_size"] == "2"          # the function saw a world of two
    assert child["tags.workers_reported"] == "2"    # both ranks reported
    assert child["tags.replicas_in_sync"] == "1"    # and ended with identical weights
    assert child["metrics.test_acc"] > 0.5

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    assert [a.path for a in client.list_artifacts(child.run_id, "checkpoint")] == ["checkpoint/model.pt"]


def test_train_backend_ray_train_forces_torch_trainer_with_one_worker(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = run_cli(tmp_path, "lab1", "--study", "mlp-capacity", "--num-samples", "1", "--set", "epochs=2",
                 "train_backend=ray-train")
    assert rc == 0
    child = child_runs(tmp_path, "lab1").iloc[0]
    assert child.status == "FINISHED"
    assert child["tags.workers_reported"] == "1" and child["tags.world_size"] == "1"
