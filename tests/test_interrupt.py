"""Ctrl-C during a study: exit 130 and no MLflow run left RUNNING."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import LOCAL_RAY
from tests.drivers import ATTEMPTS, ray_did_not_start

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _running_children(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                               "WHERE t.key = 'mlflow.parentRunId' AND r.status = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_ctrl_c_ends_every_run(tmp_path):
    db, log = tmp_path / "mlflow.db", tmp_path / "out.log"
    for _ in range(ATTEMPTS):  # started again if its Ray did not come up (tests/drivers.py)
        proc = subprocess.Popen([sys.executable, str(REPO / "orchestrator" / "run.py"), "lab1", "--study", "residual-mlp",
                                 "--set", "epochs=500", "--quiet", "--max-concurrent", "2",
                                 "--mlflow-uri", f"sqlite:///{db}", *LOCAL_RAY],  # not an inherited MLFLOW_TRACKING_URI
                                cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 480
            while _running_children(db) < 1 and time.time() < deadline and proc.poll() is None:
                time.sleep(1)
            if ray_did_not_start(proc, log):
                continue
            assert _running_children(db) >= 1, "no trial started: " + log.read_text()[-3000:]
            time.sleep(3)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
            break
        finally:
            proc.kill()
    out = (tmp_path / "out.log").read_text()
    assert proc.returncode == 130, out[-3000:]
    assert "INTERRUPTED" in out, out[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    df = mlflow.search_runs(experiment_names=["lab1"])
    assert len(df) >= 2 and "RUNNING" not in set(df.status)
    assert set(df[df["tags.mlflow.parentRunId"].isna()].status) == {"KILLED"}
