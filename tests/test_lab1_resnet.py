"""Lab 1's ResNet-18 study (CIFAR stem) through the CLI on the quick profile, with a tiny budget: one trial
of one epoch on the digits, its sampled recipe, metrics and checkpoint read back from MLflow."""
from __future__ import annotations

import mlflow
import pytest

from tests.conftest import child_runs, mlflow_uri, run_cli

pytestmark = pytest.mark.slow


def test_resnet_study_runs_on_the_quick_profile(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(tmp_path, "lab1", "--study", "resnet", "--num-samples", "1", "--set", "epochs=1") == 0
    (_, child), = child_runs(tmp_path, "lab1").iterrows()
    assert child["status"] == "FINISHED" and child["params.model"] == "resnet18" and child["params.epochs"] == "1"
    assert child["params.optimizer"] in ("sgd", "adam") and child["params.batch_size"] in ("64", "128", "256")
    assert 0 <= child["metrics.test_acc"] <= 1
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    assert "checkpoint/model.pt" in {a.path for a in client.list_artifacts(child["run_id"], "checkpoint")}
