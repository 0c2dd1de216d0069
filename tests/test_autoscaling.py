"""run.py on an autoscaling cluster of the shipped shape (AutoscalingCluster: a CPU-less head, a
gpu_worker type with fake GPUs and min_workers 0), in a private namespace (tests/isolation.py):

- a trial no node type can hold: one line, exit 2, no run;
- `run.py lab1 --study residual-mlp` starts with zero workers, says it waits for a node, gets one
  from the autoscaler and finishes with every run in MLflow;
- a DDP trial with 2 workers takes a whole GPU per worker by default: its ranks run on distinct GPUs;
- `--wait-for-nodes 1` for a trial that needs one node more than the settled cluster has: a clear
  error, exit 2, no run.

One cluster for all four (starting one takes 25-50 s here); tests/autoscaling_cluster.py runs them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest

from tests.isolation import run_isolated, unavailable

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, dict]:
    if (reason := unavailable()) is not None:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("autoscaling")
    # gloo: the worker nodes' GPUs are declared, not real, and NCCL will not start without CUDA.
    env = {"DLA_DDP_BACKEND": "gloo", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120"}
    proc = run_isolated(f'cd "{REPO}" && "$DLA_PYTHON" -m tests.autoscaling_cluster "$DLA_WORK"', work,
                        timeout_s=2200, env=env)
    log = (work / "isolated.log").read_text()[-4000:]
    assert proc.returncode == 0, log
    return work, json.loads((work / "results.json").read_text())


def _runs(work: Path, name: str):
    mlflow.set_tracking_uri(f"sqlite:///{work / name}.db")
    return mlflow.search_runs(experiment_names=["lab1"])


def test_a_trial_no_node_type_holds_is_refused_before_any_run(results):
    work, r = results
    no_fit = r["no_fit"]
    assert no_fit["rc"] == 2, no_fit
    errors = [line for line in no_fit["stderr"].splitlines() if line.startswith("run.py:")]
    assert errors == [no_fit["stderr"].strip().splitlines()[-1]] and "which no node can hold" in errors[0]
    assert "gpu_worker: up to 3 x (2 CPU, 1 GPU)" in errors[0]
    assert not (work / "no_fit.db").exists()


def test_the_study_scales_up_from_zero_workers(results):
    work, r = results
    run = r["scale_up"]
    assert run["rc"] == 0, run["stderr"][-3000:]
    assert "waiting for nodes for lab1/residual-mlp: a trial needs 1 CPU + 0.25 GPU" in run["stderr"]
    assert "up after" in run["stderr"]
    df = _runs(work, "scale_up")
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(df) == 3 and set(df.status) == {"FINISHED"}
    assert len(children) == 2 and children["metrics.test_acc"].notna().all()
    assert (df["tags.ray"].dropna() == "cluster").all()


def test_ddp_ranks_get_distinct_gpus(results):
    work, r = results
    run = r["ddp"]
    assert run["rc"] == 0, run["stderr"][-3000:]
    df = _runs(work, "ddp")
    child = df[df["tags.mlflow.parentRunId"].notna()].iloc[0]
    assert child.status == "FINISHED" and child["params.depth"] == "2"
    assert child["tags.world_size"] == "2" and child["tags.replicas_in_sync"] == "1"
    assert child["metrics.distinct_gpus"] == 2   # one GPU per rank, not two ranks packed on one
    parent = df[df["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert parent["params.gpus_per_trial"] == "1.0"
    # The cluster grew from the head alone to two gpu_worker nodes, which the autoscaler started.
    workers = [n for n in r["nodes"] if n["resources"].get("GPU")]
    assert len(workers) >= 2


def test_the_wait_for_nodes_is_bounded(results):
    work, r = results
    run = r["timeout"]
    assert run["rc"] == 2, run["stderr"][-3000:]
    error = run["stderr"].strip().splitlines()[-1]
    # One worker more than the settled cluster had (tests/autoscaling_cluster.py), each a whole GPU.
    assert re.match(r"run\.py: error: no node that can hold a trial \([23] worker\(s\) x \(1 CPU \+ 1 GPU\)", error), error
    assert "came up within --wait-for-nodes 1 s" in error
    assert "waiting for nodes for lab1/residual-mlp" in run["stderr"] and "gave up after" in run["stderr"]
    assert not (work / "timeout.db").exists()   # no run was ever opened
