"""Can a study's trials be placed, and on what: the nodes the cluster has now plus the node types its
autoscaler may still launch.

Right after `ray up`, a cluster whose head has no CPUs (cluster.yaml) and whose workers have
`min_workers: 0` has no resource at all, and the autoscaler only adds nodes for a demand it sees.
So a trial is checked against both, before any MLflow run exists:

- it fits a node that is up: go;
- it fits a node type the autoscaler can launch: ask for that node (`request_resources`) and wait,
  one updating line, at most `--wait-for-nodes` seconds;
- it fits neither: one line, exit 2;
- a Ray Train trial fits the nodes only if Ray happens to put its driver on the right one, and no
  autoscaler can add a node otherwise: one line, exit 2 (it would wait forever on the wrong one).

Where the node types come from, most authoritative first (`read_cluster`):
1. the GCS's cluster config (`ray._private.state.state.get_cluster_config()`), when an autoscaler
   has reported one; the v1 monitor that `ray up` and `AutoscalingCluster` run does not (measured
   on Ray 2.60: None), so in practice:
2. the config file the head's autoscaler (`monitor.py`, the one logging into this Ray session's
   folder) was started with, from its command line (`--autoscaling-config=`; `ray up` passes
   `~/ray_bootstrap_config.yaml`, AutoscalingCluster a temporary file), read on the head node (by
   a zero-CPU task there when this driver runs elsewhere); `~/ray_bootstrap_config.yaml` when no
   monitor process can be seen;
3. none: no autoscaler; the nodes that are up are all there is.

While a study runs, `StallGuard` bounds the same wait: trials pending with nothing running for
`--wait-for-nodes` seconds (the nodes went away and do not come back) end the study and its runs.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TextIO

import ray
from ray import tune

from .options import UsageError

TRAIN_DRIVER_CPUS = 0.25  # a Ray Train trial's own process (orchestrator.tuning.trial_resources)
BOOTSTRAP = "~/ray_bootstrap_config.yaml"
HEAD = "node:__internal_head__"


class NodesUnavailable(UsageError):
    """No node for the trial came up within --wait-for-nodes: one line, exit 2."""


# ---------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class TrialShape:
    """What one trial reserves: its own process, plus its Ray Train workers when it has them."""

    workers: int
    ray_train: bool
    cpus: float   # per trial, or per Train worker
    gpus: float   # likewise; fractions pack trials on one GPU

    def bundles(self) -> list[dict[str, float]]:
        worker = {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}
        if not self.ray_train:
            return [worker]
        return [{"CPU": TRAIN_DRIVER_CPUS}] + [dict(worker) for _ in range(self.workers)]

    def describe(self) -> str:
        one = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        if not self.ray_train:
            return one
        return f"{self.workers} worker(s) x ({one}) + {TRAIN_DRIVER_CPUS:g} CPU for its driver"


def default_gpus(requested: float | None, study_packing: float, workers: int, has_gpus: bool) -> float:
    """GPUs per trial (or per Train worker): the user's value; else none on a cluster without GPUs;
    else a whole GPU per DDP worker (two ranks on one GPU is an error in NCCL); else the study's
    packing (0.25-0.5: small trials share a GPU)."""
    if requested is not None:
        return requested
    if not has_gpus:
        return 0.0
    return 1.0 if workers > 1 else study_packing


# ---------------------------------------------------------------------------------------- the cluster
@dataclass(frozen=True)
class NodeType:
    name: str
    resources: Mapping[str, float]  # {}: detected when the node starts (the local provider's single type)
    max_workers: int


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Mapping[str, float], ...]             # total resources of each node that is up
    node_types: tuple[NodeType, ...] = ()              # what the autoscaler may launch
    max_workers: int = 0                               # its cap on worker nodes, all types together
    source: str = ""                                   # where the node types were read; "" = no autoscaler

    @property
    def has_gpus(self) -> bool:
        return any(n.get("GPU", 0) > 0 for n in self.nodes) or any(
            t.resources.get("GPU", 0) > 0 and t.max_workers > 0 for t in self.node_types)

    def describe(self) -> str:
        now = _sum(self.nodes)
        text = f"{len(self.nodes)} node(s) up ({_res(now)})"
        if self.source:
            kinds = ", ".join(f"{t.name}: up to {t.max_workers} x ({_res(t.resources) if t.resources else 'as detected'})"
                              for t in self.node_types if t.max_workers > 0) or "no worker"
            text += f"; the autoscaler can launch {kinds}"
        return text


def _sum(nodes: Iterable[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in nodes:
        for k, v in n.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _res(resources: Mapping[str, float]) -> str:
    return f"{resources.get('CPU', 0):g} CPU" + (f", {resources['GPU']:g} GPU" if resources.get("GPU") else "")


def _pack(bundles: list[dict[str, float]], bins: list[Mapping[str, float]]) -> bool:
    """First-fit decreasing of the bundles into the bins (each a node's resources)."""
    free = [dict(b) for b in bins]
    for bundle in sorted(bundles, key=lambda b: (-b.get("GPU", 0), -b.get("CPU", 0))):
        for room in free:
            if _fits(bundle, room):
                for k, v in bundle.items():
                    room[k] = room.get(k, 0.0) - v
                break
        else:
            return False
    return True


def _fits(bundle: Mapping[str, float], room: Mapping[str, float]) -> bool:
    return all(room.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def _wherever_the_driver_lands(shape: TrialShape, nodes: list[Mapping[str, float]]) -> bool:
    """Whether a Ray Train trial's workers fit whichever node its driver is put on. Tune places the
    driver first, on a node Ray picks (the least used one, measured: a worker node as soon as the
    head holds anything), and Train asks for the workers only then: on a node left with 1.75 of its
    2 CPUs, a 2-CPU worker never fits, and Train waits for it forever (it retries its worker group
    every RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, without limit)."""
    driver, *workers = shape.bundles()
    landings = [i for i, n in enumerate(nodes) if _fits(driver, n)]
    return bool(landings) and all(
        _pack(workers, [{k: v - driver.get(k, 0.0) for k, v in n.items()} if j == i else n
                        for j, n in enumerate(nodes)])
        for i in landings)


NOW, LATER, MAYBE, NEVER, BY_CHANCE = "now", "later", "maybe", "never", "by chance"


def verdict(shape: TrialShape, cluster: Cluster) -> str:
    """NOW: fits the nodes that are up. LATER: fits once the autoscaler adds nodes of known types.
    MAYBE: only node types whose resources Ray detects at start could hold it, and not all of them
    are up yet. NEVER: nothing this cluster has or can launch holds it. BY_CHANCE: the nodes hold a
    Ray Train trial only if Ray puts its driver on the right one, and no autoscaler can add a node
    for the workers otherwise."""
    bundles = shape.bundles()
    if _pack(bundles, list(cluster.nodes)):
        can_grow = any(t.max_workers > 0 for t in cluster.node_types) and len(cluster.nodes) - 1 < cluster.max_workers
        if not shape.ray_train or can_grow or _wherever_the_driver_lands(shape, list(cluster.nodes)):
            return NOW
        return BY_CHANCE
    known = [t for t in cluster.node_types if t.resources and t.max_workers > 0]
    extra = [t.resources for t in known for _ in range(min(t.max_workers, cluster.max_workers, len(bundles)))]
    if _pack(bundles, list(cluster.nodes) + extra):
        return LATER
    workers_up = len(cluster.nodes) - 1
    if any(not t.resources and t.max_workers > 0 for t in cluster.node_types) and workers_up < cluster.max_workers:
        return MAYBE
    return NEVER


def check(shape: TrialShape, cluster: Cluster) -> str:
    v = verdict(shape, cluster)
    if v == NEVER:
        raise UsageError(f"a trial needs {shape.describe()}, which no node can hold: {cluster.describe()}; "
                         f"lower --cpus-per-trial, --gpus-per-trial or --workers-per-trial")
    if v == BY_CHANCE:
        raise UsageError(f"a trial needs {shape.describe()}, which {cluster.describe()} hold only if Ray puts the "
                         f"driver on the right node (on another, its workers would wait forever); "
                         f"{_safer_cpus(shape, cluster)}")
    return v


def _safer_cpus(shape: TrialShape, cluster: Cluster) -> str:
    """The advice of a BY_CHANCE refusal: the largest --cpus-per-trial (in quarters) that fits wherever
    the driver lands, if one does."""
    for quarters in range(int(shape.cpus * 4 - 1e-9), 0, -1):
        fewer = replace(shape, cpus=quarters / 4)
        if _wherever_the_driver_lands(fewer, list(cluster.nodes)):
            return f"--cpus-per-trial {fewer.cpus:g} fits wherever it lands"
    return "no --cpus-per-trial (in quarters) fits wherever it lands"


# ---------------------------------------------------------------------------------------- reading it
def _node_totals() -> tuple[dict[str, float], ...]:
    return tuple({k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive"))


def node_types_of(config: Mapping[str, Any]) -> tuple[tuple[NodeType, ...], int]:
    """The launchable node types and the global worker cap of an autoscaler config (cluster.yaml
    form, prepared or raw; the local provider's form is derived by Ray's prepare_config)."""
    config = dict(config)
    if "available_node_types" not in config:
        from ray.autoscaler._private.util import prepare_config

        config = prepare_config(config)
    cap = int(config.get("max_workers", 0))
    head = config.get("head_node_type")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        # The head type launches no workers unless it says so (the local provider's one type does).
        most = int(spec.get("max_workers", 0 if name == head else cap))
        types.append(NodeType(name, {k: float(v) for k, v in (spec.get("resources") or {}).items()}, min(most, cap)))
    return tuple(types), cap


def _monitor_config_path(session: str) -> Path | None | bool:
    """The --autoscaling-config of this cluster's monitor process on this machine (the one whose logs
    go to this Ray session's folder: other clusters' monitors may run here too): a path; None when that
    monitor runs without one (no autoscaler); False when no such monitor is visible."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if not any(a.endswith("autoscaler/_private/monitor.py") or a.endswith("autoscaler/v2/monitor.py") for a in args):
            continue
        if not any(a.startswith("--logs-dir=") and f"/{session}/" in a for a in args):
            continue
        for a in args:
            if a.startswith("--autoscaling-config="):
                path = Path(os.path.expanduser(a.partition("=")[2]))
                return path if path.is_absolute() else Path(os.readlink(proc / "cwd")) / path
        return None
    return False


def autoscaler_config_here(session: str) -> tuple[str, dict[str, Any]] | None:
    """(path, config) of the autoscaler of Ray session `session`, read on the machine this runs on (the head)."""
    import yaml

    path = _monitor_config_path(session)
    if path is False:
        bootstrap = Path(os.path.expanduser(BOOTSTRAP))
        path = bootstrap if bootstrap.exists() else None
    if path is None:
        return None
    try:
        return str(path), yaml.safe_load(Path(path).read_text())  # YAML or JSON
    except (OSError, yaml.YAMLError):
        return None


@ray.remote(num_cpus=0)
def _autoscaler_config_on_head(session: str) -> tuple[str, dict[str, Any]] | None:
    return autoscaler_config_here(session)


def _from_gcs() -> tuple[tuple[NodeType, ...], int] | None:
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        return None
    if config is None or not config.node_group_configs:
        return None
    types = tuple(NodeType(g.name, {k: float(v) for k, v in g.resources.items()},
                           g.max_count if g.max_count >= 0 else 10**6) for g in config.node_group_configs)
    return types, sum(t.max_workers for t in types)


def read_cluster(autoscaler: bool = True) -> Cluster:
    """The nodes that are up and, unless `autoscaler` is False (a private local Ray has none), what
    the cluster's autoscaler can launch."""
    nodes = _node_totals()
    if not autoscaler:
        return Cluster(nodes)
    if (gcs := _from_gcs()) is not None:
        return Cluster(nodes, gcs[0], gcs[1], "the GCS cluster config")
    session = ray._private.worker.global_worker.node.session_name
    here = ray.get_runtime_context().get_node_id()
    on_head = any(n["NodeID"] == here and HEAD in n["Resources"] for n in ray.nodes() if n.get("Alive"))
    try:
        found = (autoscaler_config_here(session) if on_head else
                 ray.get(_autoscaler_config_on_head.options(resources={HEAD: 0.001}).remote(session), timeout=60))
    except Exception:
        found = None
    if found is None:
        return Cluster(nodes)
    types, cap = node_types_of(found[1])
    return Cluster(nodes, types, cap, found[0])


def _activity_v2() -> str | None:
    """Autoscaler v2 (what `ray up` starts since Ray 2.50) reports its state through the GCS."""
    from ray.autoscaler.v2.sdk import get_cluster_status
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if not is_autoscaler_v2(fetch_from_server=True):
        return None
    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    parts = [f"launching {r.count} {r.ray_node_type_name}" for r in status.pending_launches]
    parts += [f"{n.ray_node_type_name} {(n.details or 'starting').lower()}" for n in status.pending_nodes]
    parts += [f"{r.ray_node_type_name} failed to launch" for r in status.failed_launches]
    return ", ".join(parts) or "autoscaler idle"


def autoscaler_activity() -> str:
    """What the autoscaler is doing, from the status it publishes for `ray status` (best effort)."""
    try:
        if (v2 := _activity_v2()) is not None:
            return v2
    except Exception:
        pass
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        report = json.loads(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) or b"{}").get("autoscaler_report")
    except Exception:
        report = None
    if not report:
        return "no autoscaler status yet"
    parts = [f"launching {n} {t}" for t, n in (report.get("pending_launches") or {}).items()]
    parts += [f"{t} {str(s).lower().replace('_', '-')}" for _, t, s in report.get("pending_nodes") or []]
    parts += [f"{t} failed to start" for _, t in report.get("failed_nodes") or []]
    return ", ".join(parts) or "autoscaler idle"


# ---------------------------------------------------------------------------------------- waiting
class StatusLine:
    """One updating line on a terminal (`\\r`); in a log, a line when the news changes or every 30 s."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.tty = out, out.isatty()
        self.shown, self.last_news, self.last_t = False, "", 0.0

    def show(self, news: str, clock: str) -> None:
        now = time.monotonic()
        if self.tty:
            self.out.write(f"\r{news}; {clock}\033[K")
        elif news != self.last_news or now - self.last_t >= 30:
            self.out.write(f"{news}; {clock}\n")
            self.last_news, self.last_t = news, now
        else:
            return
        self.out.flush()
        self.shown = True

    def done(self, text: str) -> None:
        self.out.write(("\r" if self.tty else "") + text + ("\033[K\n" if self.tty else "\n"))
        self.out.flush()


def _request(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


@dataclass
class Waiter:
    """The pieces `wait_for_nodes` uses, replaceable in tests."""

    read: Callable[[], Cluster] = read_cluster
    request: Callable[[list[dict[str, float]]], None] = _request
    activity: Callable[[], str] = autoscaler_activity
    out: TextIO = field(default_factory=lambda: sys.stderr)
    poll_s: float = 2.0


def wait_for_nodes(shape: TrialShape, timeout_s: float, study: str = "", w: Waiter | None = None) -> float:
    """Returns at once when a trial fits the nodes that are up; otherwise asks the autoscaler for
    one trial's nodes and waits until they are up (the seconds waited). Raises UsageError when the
    trial can never be placed, NodesUnavailable after `timeout_s`. The request is withdrawn on the
    way out: from then on the study's own placement groups are the autoscaler's demand."""
    w = w or Waiter()
    cluster = w.read()
    if check(shape, cluster) == NOW:
        return 0.0
    w.request(shape.bundles())
    line, start = StatusLine(w.out), time.monotonic()
    what = f"waiting for nodes{f' for {study}' if study else ''}: a trial needs {shape.describe()}"
    outcome = "gave up"
    try:
        while (elapsed := time.monotonic() - start) < timeout_s:
            line.show(f"{what}; {w.activity()}", f"{elapsed:.0f} s of --wait-for-nodes {timeout_s:g}")
            # The last poll ends at the limit, not up to poll_s past it: nodes that come up after
            # --wait-for-nodes are not taken (the limit means what it says, and a test of it is not a race).
            time.sleep(min(w.poll_s, timeout_s - elapsed))
            cluster = w.read()
            if check(shape, cluster) == NOW and time.monotonic() - start < timeout_s:
                outcome = "up"
                return time.monotonic() - start
        raise NodesUnavailable(f"no node that can hold a trial ({shape.describe()}) came up within "
                               f"--wait-for-nodes {timeout_s:g} s ({w.activity()}; {cluster.describe()})")
    finally:
        w.request([])
        if line.shown:
            line.done(f"{what}: {outcome} after {time.monotonic() - start:.0f} s")


class StallGuard(tune.Callback):
    """Ends a study whose trials wait for nodes that never come: once trials have been pending with
    none running for `timeout_s`, every MLflow run of the study is ended (`tracker.close`, the
    parent KILLED) and NodesUnavailable stops the Tuner."""

    def __init__(self, timeout_s: float, tracker: Any) -> None:
        self.timeout_s, self.tracker = timeout_s, tracker
        self.since: float | None = None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        pending = [t for t in trials if t.status == "PENDING"]
        if not pending or any(t.status == "RUNNING" for t in trials):
            self.since = None
            return
        self.since = self.since or time.monotonic()
        if time.monotonic() - self.since > self.timeout_s:
            self.tracker.close(interrupted=True)
            raise NodesUnavailable(f"{len(pending)} trial(s) waited {self.timeout_s:g} s (--wait-for-nodes) for "
                                   f"nodes with none running ({autoscaler_activity()}); the study's runs are ended")


# ---------------------------------------------------------------------------------------- the plan
def prepare(planned: list[Any], args: Any, ray_mode: str) -> dict[str, TrialShape]:
    """Each planned study's trial shape (its GPUs chosen against what the cluster has or can launch),
    checked: a study whose trials can never be placed is a UsageError before any run exists."""
    cluster = read_cluster(autoscaler=ray_mode != "local")
    shapes = {}
    for p in planned:
        shape = TrialShape(workers=args.workers_per_trial,
                           ray_train=args.workers_per_trial > 1 or p.run_keys.get("train_backend") == "ray-train",
                           cpus=args.cpus_per_trial,
                           gpus=default_gpus(args.gpus_per_trial, p.study.gpus_per_trial, args.workers_per_trial,
                                             cluster.has_gpus))
        check(shape, cluster)
        shapes[p.study.key] = shape
    return shapes
