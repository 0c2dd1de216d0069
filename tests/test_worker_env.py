"""The environment run.py gives the processes Ray starts (orchestrator.tuning.WORKER_ENV): trials at the
driver's niceness, not Ray's 15 (at 15 a trial got 4% of a core beside two busy loops), and Train's
fast report polling; on a private Ray through the raylet's environment, on a joined cluster through the
job's runtime env; a value the user set wins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import tuning

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_init(monkeypatch):
    import ray

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(tuning, "_live_cluster_address", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return seen


def test_a_private_ray_inherits_the_worker_env(fake_init, monkeypatch):
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # the user's own value
    assert tuning.connect_ray("local") == "local"
    assert os.environ["RAY_worker_niceness"] == "0"
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"


def test_a_joined_cluster_gets_the_worker_env_in_the_jobs_runtime_env(fake_init, monkeypatch):
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert tuning.connect_ray("10.0.0.1:6379") == "cluster"
    assert fake_init["address"] == "10.0.0.1:6379"
    assert fake_init["runtime_env"]["env_vars"] == tuning.WORKER_ENV
    assert "RAY_worker_niceness" not in os.environ  # the cluster's processes exist already


@pytest.mark.slow
def test_the_processes_of_a_private_ray_run_at_the_drivers_niceness(tmp_path):
    code = ("import os, ray\n"
            "from orchestrator.tuning import connect_ray\n"
            "connect_ray('local', num_cpus=1, object_store_mb=100, worker_logs=False)\n"
            "print('nice', os.nice(0), ray.get(ray.remote(lambda: os.nice(0)).remote()))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_worker_niceness", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line, = [x for x in done.stdout.splitlines() if x.startswith("nice ")]
    _, driver, worker = line.split()
    assert worker == driver, line  # Ray's own default would be 15
