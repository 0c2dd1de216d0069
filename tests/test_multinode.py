"""A simulated two-node cluster on this machine (ray.cluster_utils.Cluster, fake GPUs declared on
the worker node): trials land on both nodes, a 2-worker DDP trial spans both nodes, every run
reaches MLflow. (Losing nodes mid-study, with retries from checkpoints: tests/test_chaos.py.)"""
from __future__ import annotations

import socket

import pytest

from tests.conftest import assert_tested_once, child_runs, run_cli

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # Each node's dashboard agent gets its own port: two nodes on one machine would both ask for the
    # default one, and a node without its agent cannot start trial actors (they wait forever).
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "object_store_memory": 200 * 2**20,
                                                      "dashboard_port": _free_port(),
                                                      "dashboard_agent_listen_port": _free_port()})
    worker = c.add_node(num_cpus=2, num_gpus=2, object_store_memory=200 * 2**20,
                        dashboard_agent_listen_port=_free_port())
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c, worker
    ray.shutdown()
    c.shutdown()


def _nodes_of(class_name: str) -> set[str]:
    from ray.util.state import list_actors


    return {a.node_id for a in list_actors(filters=[("class_name", "=", class_name)], detail=True, limit=10_000)}


def test_trials_are_scheduled_on_both_nodes(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 2 CPUs per trial: the head (3 CPUs) holds one trial, so a second running trial must use the worker.
    rc = run_cli(tmp_path, "lab1", "--study", "mlp-capacity", "--num-samples", "4", "--max-concurrent", "4",
                 "--cpus-per-trial", "2", "--gpus-per-trial", "0", "--set", "epochs=25")
    assert rc == 0
    children = child_runs(tmp_path, "lab1")
    assert children["tags.node_id"].nunique() == 2
    assert len(children) == 4 and set(children.status) == {"FINISHED"}
    assert_tested_once(children, ["width"])  # 4 trials in 3 cells: 3 tested


def test_fractional_gpu_trials_pack_on_the_gpu_node(cluster, tmp_path, monkeypatch):
    """--gpus-per-trial 0.5 on a node with 2 (fake) GPUs: the trials can only run there (and train
    on the CPU, as torch sees no GPU)."""
    _, worker = cluster
    monkeypatch.chdir(tmp_path)
    rc = run_cli(tmp_path, "lab1", "--study", "mlp-capacity", "--num-samples", "3", "--gpus-per-trial", "0.5",
                 "--set", "epochs=3")
    assert rc == 0
    children = child_runs(tmp_path, "lab1")
    assert len(children) == 3 and set(children.status) == {"FINISHED"}
    assert set(children["tags.node_id"]) == {worker.node_id}


def test_ddp_trial_spans_two_nodes(cluster, tmp_path, monkeypatch):
    # 1.75 CPUs per worker: whichever node Ray puts the trial's 0.25-CPU driver on (the head of 3 CPUs
    # or the worker node of 2), each node still holds one worker and neither holds two.
    monkeypatch.chdir(tmp_path)
    rc = run_cli(tmp_path, "lab1", "--study", "residual-mlp", "--num-samples", "1", "--workers-per-trial", "2",
                 "--cpus-per-trial", "1.75", "--gpus-per-trial", "0", "--set", "epochs=2", "depth=2")
    assert rc == 0
    assert len(_nodes_of("RayTrainWorker")) == 2
    child = child_runs(tmp_path, "lab1").iloc[0]
    assert child.status == "FINISHED" and child["tags.world_size"] == "2" and child["tags.replicas_in_sync"] == "1"


def test_a_ddp_trial_that_fits_only_by_chance_is_refused(cluster, tmp_path, monkeypatch, capsys):
    """2 CPUs per worker fit only with the driver on the head: on the worker node it leaves 1.75 CPUs,
    and Train would wait for its second worker forever (a CI run hung so in its test phase)."""
    monkeypatch.chdir(tmp_path)
    rc = run_cli(tmp_path, "lab1", "--study", "residual-mlp", "--num-samples", "1", "--workers-per-trial", "2",
                 "--cpus-per-trial", "2", "--gpus-per-trial", "0")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "only if Ray puts the driver on the right node" in err[0] and "--cpus-per-trial 1.75" in err[0]
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()
