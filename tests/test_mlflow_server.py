"""--mlflow-uri http://127.0.0.1:PORT with nothing listening: the orchestrator serves MLflow itself
(loopback only) for the study, with artifacts served by the server."""
from __future__ import annotations

import socket

import mlflow
import pytest

from orchestrator.cli import main
from tests.conftest import LOCAL_RAY

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_study_logs_through_a_served_mlflow(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{_free_port()}"
    rc = main(["lab1", "--study", "mlp-capacity", "--num-samples", "2", "--set", "epochs=2", "--quiet",
               "--storage", str(tmp_path / "ray_results"), "--mlflow-uri", uri, *LOCAL_RAY])
    assert rc == 0
    # The server is gone; its SQLite store and artifact folder stay in the launch folder.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    df = mlflow.search_runs(experiment_names=["lab1"])
    assert len(df) == 3 and set(df.status) == {"FINISHED"}
    assert list((tmp_path / "mlartifacts").rglob("curves.png")), "figures did not reach the served artifact store"
    assert list((tmp_path / "mlartifacts").rglob("model.pt"))
