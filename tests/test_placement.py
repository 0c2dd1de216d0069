"""Placement without a cluster: trial shapes, fits against nodes and autoscaler node types (read from
the shipped cluster.yaml and cluster-local.yaml), the bounded wait, and the stall guard."""
from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import placement
from orchestrator.cli import UsageError
from orchestrator.placement import (BY_CHANCE, LATER, MAYBE, NEVER, NOW, Cluster, NodesUnavailable, NodeType, TrialShape,
                                    Waiter, default_gpus, node_types_of, verdict, wait_for_nodes)

REPO = Path(__file__).resolve().parents[1]
HEAD_0_CPU = {"CPU": 0.0, "node:__internal_head__": 1.0}
GPU_WORKER = NodeType("gpu_worker", {"CPU": 8.0, "GPU": 1.0}, 4)


def shape(cpus=1.0, gpus=0.0, workers=1, ray_train=False) -> TrialShape:
    return TrialShape(workers=workers, ray_train=ray_train or workers > 1, cpus=cpus, gpus=gpus)


def test_bundles_of_a_plain_and_a_ddp_trial():
    assert shape(2, 0.5).bundles() == [{"CPU": 2, "GPU": 0.5}]
    assert shape(1, 1, workers=2).bundles() == [{"CPU": 0.25}, {"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}]
    assert "2 worker(s) x (1 CPU + 1 GPU) + 0.25 CPU for its driver" == shape(1, 1, workers=2).describe()


@pytest.mark.parametrize("requested, workers, has_gpus, expected", [
    (None, 1, True, 0.25),   # the study's packing
    (None, 2, True, 1.0),    # DDP: a whole GPU per rank
    (0.5, 2, True, 0.5),     # unless the user asks otherwise
    (None, 2, False, 0.0),
    (None, 1, False, 0.0),
])
def test_default_gpus(requested, workers, has_gpus, expected):
    assert default_gpus(requested, 0.25, workers, has_gpus) == expected


def test_shipped_shape_fits_only_after_scale_up():
    """cluster.yaml right after `ray up`: a CPU-less head, no worker yet."""
    empty = Cluster((HEAD_0_CPU,), (GPU_WORKER,), 4, "test")
    assert verdict(shape(1, 0.25), empty) == LATER
    assert verdict(shape(1, 1, workers=2), empty) == LATER       # two nodes of the type
    assert verdict(shape(16), empty) == NEVER                     # bigger than any node type
    assert verdict(shape(1, 1, workers=5), empty) == NEVER        # more GPUs than 4 nodes have
    assert empty.has_gpus
    up = Cluster((HEAD_0_CPU, {"CPU": 8.0, "GPU": 1.0}), (GPU_WORKER,), 4, "test")
    assert verdict(shape(1, 0.25), up) == NOW


def test_without_an_autoscaler_only_the_nodes_count():
    nodes = Cluster(({"CPU": 3.0}, {"CPU": 2.0, "GPU": 2.0}))
    assert verdict(shape(1.75, workers=2), nodes) == NOW          # one worker per node (test_multinode)
    assert verdict(shape(3, workers=2), nodes) == NEVER
    with pytest.raises(UsageError, match="a trial needs 4 CPU, which no node can hold: 2 node"):
        placement.check(shape(4), nodes)


def test_a_ddp_trial_that_fits_only_if_ray_puts_its_driver_right_is_refused():
    """Ray places the 0.25-CPU driver first, on the least used node: on the 2-CPU node, a 2-CPU worker
    no longer fits there and the other node holds one, so Train would wait forever (CI, stop 25)."""
    nodes = Cluster(({"CPU": 3.0}, {"CPU": 2.0, "GPU": 2.0}))
    assert verdict(shape(2, workers=2), nodes) == BY_CHANCE
    with pytest.raises(UsageError, match=r"^a trial needs 2 worker\(s\) x \(2 CPU\) \+ 0.25 CPU for its driver, "
                                         r"which 2 node\(s\) up \(5 CPU, 2 GPU\) hold only if Ray puts the driver "
                                         r"on the right node .*; --cpus-per-trial 1.75 fits wherever it lands$"):
        placement.check(shape(2, workers=2), nodes)
    assert verdict(shape(1.5, workers=2), Cluster(({"CPU": 4.0},))) == NOW   # one node: nowhere else to land
    assert verdict(shape(2, workers=1, ray_train=True), nodes) == NOW        # 3 - 0.25 still holds one worker
    assert verdict(shape(2), nodes) == NOW                                    # no driver without Ray Train
    growing = Cluster(nodes.nodes, (NodeType("cpu", {"CPU": 2.0}, 2),), 2, "test")
    assert verdict(shape(2, workers=2), growing) == NOW  # a node is added for the worker that did not fit
    # The one GPU is on a node with a quarter of a CPU: the driver may take it.
    with pytest.raises(UsageError, match=r"; no --cpus-per-trial \(in quarters\) fits wherever it lands$"):
        placement.check(shape(0.25, 1, workers=1, ray_train=True), Cluster(({"CPU": 0.25, "GPU": 1.0}, {"CPU": 1.0})))


def _room(bundle, node):
    """How many copies of `bundle` a node holds (identical bundles: first fit is exact)."""
    return min(int(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items())


@given(st.lists(st.tuples(st.sampled_from([1.0, 2.0, 3.0, 4.0, 8.0]), st.sampled_from([0.0, 1.0, 2.0])),
                min_size=1, max_size=4),
       st.sampled_from([0.25, 0.5, 1.0, 1.75, 2.0, 3.0]), st.sampled_from([0.0, 1.0]), st.integers(1, 4))
@settings(max_examples=300, deadline=None, database=None)
def test_now_means_the_workers_fit_wherever_ray_puts_the_driver(nodes, cpus, gpus, workers):
    """Against a brute-force oracle: the driver on each node that holds it, then the workers counted
    node by node."""
    nodes = tuple({"CPU": c, **({"GPU": g} if g else {})} for c, g in nodes)
    s = shape(cpus, gpus, workers, ray_train=True)
    driver, worker = s.bundles()[0], s.bundles()[1]
    outcomes = []
    for i, node in enumerate(nodes):
        if _room(driver, node) >= 1:
            rest = [{k: v - (driver.get(k, 0.0) if j == i else 0.0) for k, v in n.items()} for j, n in enumerate(nodes)]
            outcomes.append(sum(_room(worker, n) for n in rest) >= workers)
    expected = NOW if outcomes and all(outcomes) else BY_CHANCE if any(outcomes) else NEVER
    assert verdict(s, Cluster(nodes)) == expected


def test_local_provider_types_are_detected_at_start():
    """The local provider's one node type has no resources in its config: wait while its workers are
    not all up, decide once they are."""
    local = NodeType("local.cluster.node", {}, 1)
    assert verdict(shape(1), Cluster((HEAD_0_CPU,), (local,), 1, "test")) == MAYBE
    assert verdict(shape(4), Cluster((HEAD_0_CPU, {"CPU": 2.0}), (local,), 1, "test")) == NEVER
    assert verdict(shape(1), Cluster((HEAD_0_CPU, {"CPU": 2.0}), (local,), 1, "test")) == NOW


def test_node_types_of_the_shipped_configs():
    from ray.autoscaler._private.util import prepare_config

    cloud = prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    types, cap = node_types_of(cloud)
    assert cap == cloud["max_workers"]
    assert {t.name: (dict(t.resources), t.max_workers) for t in types} == {
        "head": ({"CPU": 0.0}, 0), "gpu_worker": ({"CPU": 8.0, "GPU": 1.0}, 4)}
    local = yaml.safe_load((REPO / "cluster-local.yaml").read_text())
    local["provider"].update(head_ip="10.0.0.1", worker_ips=["10.0.0.2", "10.0.0.3"])
    types, cap = node_types_of(local)   # raw on-prem form: Ray's prepare_config derives the node type
    assert cap == 2 and [(t.name, dict(t.resources), t.max_workers) for t in types] == [("local.cluster.node", {}, 2)]


class FakeCluster:
    """What `Waiter.read` returns, call after call; the requests the autoscaler got."""

    def __init__(self, states: list[Cluster]) -> None:
        self.states, self.requests = list(states), []

    def read(self) -> Cluster:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def waiter(self, out) -> Waiter:
        return Waiter(read=self.read, request=self.requests.append, activity=lambda: "launching 1 gpu_worker",
                      out=out, poll_s=0.01)


def test_wait_asks_for_one_trial_and_withdraws_the_request():
    empty = Cluster((HEAD_0_CPU,), (GPU_WORKER,), 4, "test")
    up = Cluster((HEAD_0_CPU, {"CPU": 8.0, "GPU": 1.0}), (GPU_WORKER,), 4, "test")
    fake, out = FakeCluster([empty, empty, empty, up]), io.StringIO()
    waited = wait_for_nodes(shape(1, 0.25), 60, "lab1/residual-mlp", fake.waiter(out))
    assert waited > 0 and fake.requests == [[{"CPU": 1, "GPU": 0.25}], []]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("waiting for nodes for lab1/residual-mlp: a trial needs 1 CPU + 0.25 GPU; "
                               "launching 1 gpu_worker; 0 s of --wait-for-nodes 60")
    assert lines[-1].startswith("waiting for nodes for lab1/residual-mlp: a trial needs 1 CPU + 0.25 GPU: up after")
    assert len(lines) == 2  # not a line per poll in a log: only when the news changes


def test_wait_is_bounded_and_a_misfit_never_asks():
    empty = Cluster((HEAD_0_CPU,), (GPU_WORKER,), 4, "test")
    fake = FakeCluster([empty])
    t0 = time.monotonic()
    with pytest.raises(NodesUnavailable, match=r"came up within --wait-for-nodes 0.2 s \(launching 1 gpu_worker"):
        wait_for_nodes(shape(1), 0.2, w=fake.waiter(io.StringIO()))
    assert time.monotonic() - t0 < 5 and fake.requests == [[{"CPU": 1}], []]
    fake = FakeCluster([empty])
    with pytest.raises(UsageError, match="which no node can hold"):
        wait_for_nodes(shape(64), 60, w=fake.waiter(io.StringIO()))
    assert fake.requests == []
    assert wait_for_nodes(shape(1), 60, w=FakeCluster([Cluster(({"CPU": 2.0},))]).waiter(io.StringIO())) == 0.0


def test_the_last_poll_ends_at_the_limit_and_a_later_node_is_not_taken():
    empty = Cluster((HEAD_0_CPU,), (GPU_WORKER,), 4, "test")
    up = Cluster((HEAD_0_CPU, {"CPU": 8.0, "GPU": 1.0}), (GPU_WORKER,), 4, "test")
    fake = FakeCluster([empty, up])
    w = fake.waiter(io.StringIO())
    w.poll_s = 30.0   # far longer than the limit: the wait must still end at the limit
    t0 = time.monotonic()
    with pytest.raises(NodesUnavailable, match="came up within --wait-for-nodes 0.3 s"):
        wait_for_nodes(shape(1), 0.3, w=w)
    assert time.monotonic() - t0 < 5


class Trial:
    def __init__(self, status: str) -> None:
        self.status = status


class Tracker:
    closed_as: bool | None = None

    def close(self, interrupted: bool = False) -> None:
        self.closed_as = interrupted


def test_stall_guard_ends_the_study_when_nothing_can_run(monkeypatch):
    monkeypatch.setattr(placement, "autoscaler_activity", lambda: "gpu_worker failed to start")
    tracker = Tracker()
    guard = placement.StallGuard(0.2, tracker)
    guard.on_step_end(0, [Trial("RUNNING"), Trial("PENDING")])   # progress: fine however long
    time.sleep(0.3)
    guard.on_step_end(1, [Trial("RUNNING"), Trial("PENDING")])
    guard.on_step_end(2, [Trial("TERMINATED"), Trial("PENDING")])  # the clock starts here
    assert tracker.closed_as is None
    time.sleep(0.3)
    with pytest.raises(NodesUnavailable, match=r"1 trial\(s\) waited 0.2 s .* with none running \(gpu_worker failed"):
        guard.on_step_end(3, [Trial("TERMINATED"), Trial("PENDING")])
    assert tracker.closed_as is True


def test_the_autoscaler_config_is_found_through_its_monitor_process(tmp_path):
    """The head's monitor.py is matched by its Ray session and read from its --autoscaling-config."""
    config = {"max_workers": 2, "available_node_types": {"w": {"resources": {"CPU": 2}, "max_workers": 2}}}
    (tmp_path / "autoscaler.json").write_text(yaml.safe_dump(config))
    fake_monitor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                     "/x/ray/autoscaler/_private/monitor.py", "--logs-dir=/tmp/ray/session_t_1/logs",
                                     f"--autoscaling-config={tmp_path / 'autoscaler.json'}"])
    try:
        deadline = time.monotonic() + 10
        while (found := placement.autoscaler_config_here("session_t_1")) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert found == (str(tmp_path / "autoscaler.json"), config)
        assert placement._monitor_config_path("session_t_2") is False  # another cluster's monitor: not ours
    finally:
        fake_monitor.kill()
        fake_monitor.wait()


def test_every_planned_study_is_checked_before_any_run(monkeypatch):
    from orchestrator.cli import build_parser, plan

    monkeypatch.setattr(placement, "read_cluster",
                        lambda autoscaler=True: Cluster((HEAD_0_CPU,), (GPU_WORKER,), 4, "test"))
    args = build_parser().parse_args(["lab1", "--workers-per-trial", "2"])
    shapes = placement.prepare(plan("lab1", ["residual-mlp", "mlp-capacity"], "quick", {}, 0), args, "cluster")
    assert {k: s.gpus for k, s in shapes.items()} == {"lab1/residual-mlp": 1.0, "lab1/mlp-capacity": 1.0}
    args = build_parser().parse_args(["lab1", "--cpus-per-trial", "9"])
    with pytest.raises(UsageError, match="a trial needs 9 CPU"):
        placement.prepare(plan("lab1", ["residual-mlp"], "quick", {}, 0), args, "cluster")
