"""Runs inside a private namespace (tests/isolation.py; started by tests/test_autoscaling.py):
an AutoscalingCluster of the shipped shape, then run.py against it; what happened goes to
WORK/results.json for the test to check.

    python -m tests.autoscaling_cluster WORK

The shape is cluster.yaml's: the head's resources ({"CPU": 0}) and the gpu_worker type (its GPU
count and min_workers 0), with 2 CPUs per worker and at most 3 workers to fit this machine. The
workers are real raylets started on this machine by the fake node provider; their GPUs are declared,
not real (torch sees none and trains on the CPU).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from ray.cluster_utils import AutoscalingCluster

REPO = Path(__file__).resolve().parents[1]
ADDRESS = "127.0.0.1:6379"  # the namespace's own loopback

# What the fake provider needs besides the node types (the wheel lacks the example.yaml that
# AutoscalingCluster would read these from).
FAKE_BASE: dict[str, Any] = {
    "cluster_name": "fake-dla", "max_workers": 3, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
    "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [], "head_node_type": "ray.head.default",
}


class ShippedShapeCluster(AutoscalingCluster):
    def _generate_config(self, head_resources: dict, worker_node_types: dict, autoscaler_v2: bool = False,
                         **config: Any) -> dict[str, Any]:
        head = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        provider = dict(FAKE_BASE["provider"])
        if autoscaler_v2:  # as AutoscalingCluster does
            from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

            provider.update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
        return {**FAKE_BASE, **config, "provider": provider,
                "available_node_types": {**worker_node_types, "ray.head.default": head}}


def shipped_shape() -> tuple[dict[str, float], dict[str, Any]]:
    shipped = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = shipped["available_node_types"]
    head = dict(types[shipped["head_node_type"]]["resources"])
    gpu = types["gpu_worker"]
    worker = {"resources": {"CPU": 2, "GPU": gpu["resources"]["GPU"], "object_store_memory": 200 * 2**20},
              "node_config": {}, "min_workers": gpu["min_workers"], "max_workers": 3}
    return {**head, "object_store_memory": 200 * 2**20}, {"gpu_worker": worker}


def run_py(work: Path, name: str, *args: str) -> dict[str, Any]:
    """One `run.py lab1 ...` against the cluster; its exit code, output and wall time."""
    cmd = [sys.executable, str(REPO / "orchestrator" / "run.py"), "lab1", "--quiet", "--ray-address", ADDRESS,
           "--storage", str(work / "ray_results"), "--mlflow-uri", f"sqlite:///{work / name}.db",
           "--report-dir", str(work / "reports" / name), *args]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900)
    (work / f"{name}.log").write_text(out.stdout + out.stderr)
    return {"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr, "seconds": time.monotonic() - t0}


def _settled_gpu_nodes(ray: Any, limit_s: float = 240.0) -> int:
    """The GPU worker nodes up once the cluster has settled: every resource free again (the last
    job's placement groups are released after its driver exits, a second or two later) and fewer
    nodes than the autoscaler's cap, so that a trial needing one node more must wait for a launch.
    Without this the bounded-wait case raced the previous job's release (CI, 2026-12-02)."""
    deadline = time.monotonic() + limit_s
    while True:
        gpu_nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU")]
        free = ray.available_resources()
        settled = all(free.get(k, 0.0) >= v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU"))
        if settled and len(gpu_nodes) < 3:   # 3: the gpu_worker type's max_workers above
            return len(gpu_nodes)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster did not settle in {limit_s:g} s: {len(gpu_nodes)} GPU nodes, free {free}")
        time.sleep(1.0)   # idle nodes go after idle_timeout_minutes (1)


def main(work: Path) -> None:
    results: dict[str, Any] = {}
    head, workers = shipped_shape()
    t0 = time.monotonic()
    cluster = ShippedShapeCluster(head_resources=head, worker_node_types=workers)
    cluster.start()
    results["start_s"] = time.monotonic() - t0
    try:
        # Nothing can be placed on a CPU-less head, and nothing is started for a trial no node type holds.
        results["no_fit"] = run_py(work, "no_fit", "--study", "residual-mlp", "--cpus-per-trial", "3")
        # From zero workers: placement asks the autoscaler, waits, then the study runs.
        results["scale_up"] = run_py(work, "scale_up", "--study", "residual-mlp", "--num-samples", "2",
                                     "--max-concurrent", "2", "--set", "epochs=1")
        # DDP over 2 workers, default GPUs: a whole (fake) GPU each, so on two gpu_worker nodes.
        results["ddp"] = run_py(work, "ddp", "--study", "residual-mlp", "--num-samples", "1", "--workers-per-trial",
                                "2", "--set", "epochs=1", "depth=2")
        import ray
        from ray.util.state import list_nodes

        ray.init(address=ADDRESS, log_to_driver=False)
        results["nodes"] = [{"id": n.node_id, "state": n.state, "resources": n.resources_total}
                            for n in list_nodes(detail=True, limit=100)]
        workers = _settled_gpu_nodes(ray)
        ray.shutdown()
        # A trial that needs one node more than are up, with no time to wait for it: the bounded wait.
        results["timeout"] = run_py(work, "timeout", "--study", "residual-mlp", "--num-samples", "1",
                                    "--workers-per-trial", str(workers + 1), "--wait-for-nodes", "1",
                                    "--set", "epochs=1")
    finally:
        (work / "results.json").write_text(json.dumps(results, indent=1))
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
