"""Shared fixtures: one local Ray per test module (ray_start_4_cpus style), MLflow in a temp SQLite."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import pytest

from orchestrator.tuning import worker_env

# Fail fast instead of retrying worker start-up forever on a starved 2-core machine.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
# Every Ray a test starts (ray_local, the simulated clusters) runs its workers as run.py's own does: at
# Ray's default nice 15 a trial starves beside any other job on the machine (orchestrator.tuning).
os.environ.update(worker_env())


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread, a shared 2-core machine makes 2 threads crawl (OpenMP
    threads waiting for each other; Ray sets OMP_NUM_THREADS=1 in trials for the same reason), and
    bit-for-bit comparisons want one intra-op thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray for the module (never joins another instance on the machine)."""
    import ray

    # ray.init turns token auth on for this process: its own Ray config and os.environ (RAY_AUTH_MODE=token).
    # Both stay after shutdown, and must agree: a cluster this process starts later (tests/test_chaos.py)
    # gets the variable, so its nodes run the mode this process talks. Only a machine of its own
    # (tests/isolation.py) starts without it.
    ray.init(address="local", num_cpus=4, object_store_memory=300 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


# Every run.py a test starts gets this (or an explicit address): the suite never joins, or is killed
# by, a Ray someone else started on the machine with `ray start`.
LOCAL_RAY = ("--ray-address", "local")


def run_cli(tmp_path: Path, *args: str) -> int:
    """Runs `run.py ARGS` in-process (on the module's Ray), with storage and MLflow under tmp_path.
    `--ray-address local`: without a module Ray it starts a private one, never joining another."""
    from orchestrator.cli import main

    return main([*args, "--quiet", "--storage", str(tmp_path / "ray_results"),
                 "--mlflow-uri", mlflow_uri(tmp_path), *LOCAL_RAY])


def mlflow_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def runs(tmp_path: Path, experiment: str) -> Any:
    """All runs of an experiment as a pandas DataFrame (mlflow.search_runs)."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri(tmp_path))
    return mlflow.search_runs(experiment_names=[experiment])


def child_runs(tmp_path: Path, experiment: str) -> Any:
    """The trial runs (children of a study's parent run) of an experiment, as a DataFrame."""
    df = runs(tmp_path, experiment)
    return df[df["tags.mlflow.parentRunId"].notna()]


def assert_tested_once(children: Any, factors: Sequence[str], metric: str = "best_val_acc") -> None:
    """Test once (#16): in each cell (combination of `factors`), the best trial by `metric` (ties to
    the lower trial id) has test numbers, tagged `tested`, and no other trial has any."""
    groups = children.groupby([f"params.{f}" for f in factors]) if factors else [((), children)]
    for cell, group in groups:
        best = group.sort_values([f"metrics.{metric}", "tags.trial_id"], ascending=[False, True]).iloc[0]
        tested = group[group["metrics.test_acc"].notna()]
        assert list(tested.run_id) == [best.run_id], (cell, list(group["tags.trial_id"]), list(tested.run_id))
        assert 0 <= best["metrics.test_acc"] <= 1 and best["tags.tested"] == "true", cell


@pytest.fixture(scope="session")
def full_fixtures(tmp_path_factory) -> Path:
    """Every dataset and model the full profile reads, in its real on-disk format, 4 images per class
    (tests/fixture_data.py); built once per session (test_full_profile, test_smoke)."""
    from tests import fixture_data

    d = tmp_path_factory.mktemp("full-profile-data")
    fixture_data.build(d, images_per_class=4)
    return d
