"""Chaos, in the style of Ray's release tests: faults at seeded random moments, then the invariants.

- Driver chaos: one study's driver (a `run.py` process) is SIGKILLed at K seeded random moments,
  some during start-up (before or after the invocation record, the MLflow parent, Tune's first
  state), some during training (just after a checkpoint appeared); each time the study is resumed.
  Then: exactly N finished child runs, each trial once, none RUNNING, the parent FINISHED, every
  epoch exactly once in every finished trial's metric history, and trials that continued across a
  kill did so from a checkpoint.
- Trial and node chaos: on a simulated 3-node cluster (ray.cluster_utils.Cluster) a killer wakes
  every few seconds and, with probability P, SIGKILLs a random trial process or removes the worker
  node a random trial runs on (a new node joins in its place); at most MAX_KILLS times. With
  unlimited retries every trial reaches its last epoch, and every killed trial resumed from a
  checkpoint, not from epoch 1.

Epochs are paced (tests/faults.py): each lasts at least a second however fast the machine, so that
the faults strike while there is work left (unpaced, an epoch of this study takes ~0.2 s on CI and
the driver's kills came after its last trial). Every wait polls with a generous deadline.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from ray import tune

from orchestrator import invocation
from tests.conftest import LOCAL_RAY, mlflow_uri, runs
from tests.drivers import ATTEMPTS, ray_did_not_start, run_to_end

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
FAULTS_SITE = REPO / "tests" / "faults_site"  # sitecustomize: paced epochs in a run.py's Ray workers
SLOW_EPOCHS = ["depth=4", "batch_size=16"]  # residual-mlp on the quick profile, 0.2-0.3 s an epoch unpaced


def _restores_from_checkpoints(storage: Path) -> list[tuple[str, int]]:
    """(trial folder, iteration) of every result that was the first after a restore from a
    checkpoint (Tune counts `iterations_since_restore` from 1 again; `training_iteration` goes on)."""
    found = []
    for result in storage.glob("*/run_trial_*/result.json"):
        for line in result.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("iterations_since_restore") == 1 and r.get("training_iteration", 0) > 1:
                found.append((result.parent.name, r["training_iteration"]))
    return found


def _iteration_times(storage: Path) -> list[float]:
    """Tune's time_this_iter_s of every result the trials reported (paced: at least the pace)."""
    times = []
    for result in storage.glob("*/run_trial_*/result.json"):
        for line in result.read_text().splitlines():
            with contextlib.suppress(ValueError):
                times.append(json.loads(line)["time_this_iter_s"])
    return times


def _assert_each_epoch_once(tmp_path: Path, finished, epochs: int) -> None:
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in finished.run_id:
        for key in ("val_acc", "train_loss"):
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            assert steps == list(range(1, epochs + 1)), (run_id, key, steps)


# ------------------------------------------------------------------------------ driver chaos
TRIALS, EPOCHS, KILLS, DRIVER_PACE = 3, 12, 5, 1.0


def _driver(tmp_path: Path, log: str, *args: str) -> subprocess.Popen:
    # Output to a file: an unread pipe would fill up and block the driver. An explicit --mlflow-uri:
    # an earlier in-process test may have left MLFLOW_TRACKING_URI set. The driver's private Ray's
    # workers inherit its environment: paced epochs (tests/faults_site, first on PYTHONPATH).
    path = [str(FAULTS_SITE), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "DLA_TEST_EPOCH_PACE": str(DRIVER_PACE)}
    return subprocess.Popen([sys.executable, str(REPO / "orchestrator" / "run.py"), "lab1", "--study", "residual-mlp",
                             "--quiet", "--mlflow-uri", mlflow_uri(tmp_path), "--storage", str(tmp_path / "ray_results"),
                             *LOCAL_RAY, *args], cwd=tmp_path, stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT,
                            text=True, env=env)


def _checkpoints(storage: Path) -> set[Path]:
    return set(storage.glob("*/run_trial_*/checkpoint_*"))


def _until(driver: subprocess.Popen, done, deadline: float) -> None:
    while time.monotonic() < deadline and driver.poll() is None and not done():
        time.sleep(0.1)


def test_a_study_survives_its_driver_killed_at_random_moments(tmp_path):
    """Kill moments of three kinds: `start-up` (seconds after the process started: before Ray, the
    invocation record or the MLflow parent exist), `set-up` (just after the driver named its MLflow
    parent: Tune's first state may not be on storage yet), `training` (just after one of this
    driver's trials wrote a checkpoint: registration, history, snapshot copy all in flight)."""
    rng = random.Random(15)
    storage = tmp_path / "ray_results"
    study = ["--num-samples", str(TRIALS), "--max-concurrent", "2", "--set", f"epochs={EPOCHS}", *SLOW_EPOCHS]
    kinds = ["start-up", "set-up"] + ["training"] * (KILLS - 2)
    rng.shuffle(kinds)
    kills: list[str] = []

    def start(log: Path) -> subprocess.Popen:
        resume = any((storage / "dla_runs").glob("*.pkl"))  # killed before its record: start it again
        return _driver(tmp_path, log.name, *(["--resume"] if resume else study))

    for i, kind in enumerate(kinds):
        log = tmp_path / f"driver{i}.log"
        delay = {"start-up": rng.uniform(1, 15), "set-up": rng.uniform(0, 3), "training": rng.uniform(0, 4)}[kind]
        for _ in range(ATTEMPTS):
            driver = start(log)
            deadline = time.monotonic() + 420
            try:
                if kind != "start-up":  # the driver has its MLflow parent (and, resuming, has restored Tune's state)
                    _until(driver, lambda: "MLflow parent run" in log.read_text(), deadline)
                if kind == "training":  # then a checkpoint of one of its own trials
                    seen = _checkpoints(storage)
                    _until(driver, lambda: bool(_checkpoints(storage) - seen), deadline)
                _until(driver, lambda: False, min(deadline, time.monotonic() + delay))
                if ray_did_not_start(driver, log):
                    continue
                assert driver.poll() is None, f"driver {i} ({kind}) ended before its kill: " + log.read_text()[-3000:]
                driver.send_signal(signal.SIGKILL)
                driver.wait(timeout=60)
                kills.append(f"{kind} +{delay:.1f}s")
                break
            finally:
                driver.kill()
    # A kill that struck after the report was written leaves nothing to do: --resume says so (exit 2).
    record = invocation.newest(str(storage), "lab1")
    done = record is not None and record.finished
    rc = run_to_end(lambda: start(tmp_path / "last.log"), tmp_path / "last.log")
    last = (tmp_path / "last.log").read_text()
    assert rc == (2 if done else 0) and (not done or "nothing to resume" in last), (kills, last[-4000:])
    assert len(kills) >= 5

    df = runs(tmp_path, "lab1")
    assert "RUNNING" not in set(df.status), kills
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1 and parents.status.iloc[0] == "FINISHED"
    children = df[df["tags.mlflow.parentRunId"].notna()]
    finished = children[children.status == "FINISHED"]
    assert len(finished) == TRIALS and finished["tags.trial_id"].is_unique, kills   # every trial, each once
    assert (finished["tags.status"] == "finished").all()
    _assert_each_epoch_once(tmp_path, finished, EPOCHS)
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in finished.run_id:
        assert "checkpoint/model.pt" in {a.path for a in client.list_artifacts(run_id, "checkpoint")}
    # Trials went on across kills from checkpoints (Tune's own record of each trial's results), and
    # the runs the kills cut short say what they were.
    assert _restores_from_checkpoints(storage), kills
    assert min(_iteration_times(storage)) >= DRIVER_PACE  # the pacing reached the trials: the kills had work to cut
    cut = children[children.status == "KILLED"]
    assert (cut["tags.status"] == "killed").all()


# ------------------------------------------------------------------------------ trial and node chaos
# Long enough for several kills on any machine: every epoch lasts at least PACE seconds (tests/faults.py
# paces the trials' reports), so 4 trials x 16 epochs, 3 at a time, train for >= 32 s however fast the
# machine (at full speed, CI once finished the study before the killer struck at all). A node removal
# (and its replacement's start) holds the killer for ~10-20 s, so it is the rarer fault.
CLUSTER_TRIALS, CLUSTER_EPOCHS, MAX_KILLS, P, P_NODE, PACE = 4, 16, 6, 0.7, 0.35, 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _add_worker(c):
    # Each node's dashboard agent gets its own port (see tests/test_multinode.py). The killer thread
    # adds replacement nodes: Ray's node start-up installs a SIGTERM handler, which Python allows in
    # the main thread only, so off it that step is skipped (the test's process is not a node).
    from unittest import mock

    import ray._private.utils

    patch = mock.patch.object(ray._private.utils, "set_sigterm_handler") \
        if threading.current_thread() is not threading.main_thread() else contextlib.nullcontext()
    with patch:
        return c.add_node(num_cpus=2, object_store_memory=200 * 2**20, dashboard_agent_listen_port=_free_port())


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # The nodes' processes inherit this environment, trial workers included: paced epochs there.
    with pytest.MonkeyPatch.context() as env:
        path = [str(FAULTS_SITE), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env.setenv("PYTHONPATH", os.pathsep.join(path))
        env.setenv("DLA_TEST_EPOCH_PACE", str(PACE))
        yield from _cluster(ray, Cluster)


def _cluster(ray, Cluster):
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 200 * 2**20,
                                                      "dashboard_port": _free_port(),
                                                      "dashboard_agent_listen_port": _free_port()})
    for _ in range(2):
        _add_worker(c)
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


class Spy(tune.Callback):
    """The driver's view the killer picks its victims from: each running trial's process, node and
    iteration, whether Tune has registered a checkpoint of it, and every restart (its iteration)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, dict] = {}                 # trial id -> pid, node, iteration
        self.saved: set[str] = set()                       # trials with a registered checkpoint
        self.restarts: list[tuple[str, int, bool, float]] = []  # (trial, iteration, had a checkpoint, when)
        self.last: dict[str, int] = {}                     # trial id -> its last iteration when it completed
        self.fastest = float("inf")                        # the shortest iteration seen (paced: >= PACE)

    def __getstate__(self) -> dict:  # Tune pickles its callbacks into tuner.pkl
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        with self.lock:
            self.running[trial.trial_id] = {"pid": result["pid"], "node": result.get("node_id"),
                                            "iteration": result["training_iteration"]}
            self.fastest = min(self.fastest, result["time_this_iter_s"])
            if result.get("iterations_since_restore") == 1:
                self.restarts.append((trial.trial_id, result["training_iteration"], trial.trial_id in self.saved,
                                      time.time()))

    def on_trial_save(self, iteration, trials, trial, **info):  # after Tune registered the checkpoint
        with self.lock:
            self.saved.add(trial.trial_id)

    def _gone(self, trial):
        with self.lock:
            self.running.pop(trial.trial_id, None)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._gone(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._gone(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._gone(trial)
        self.last[trial.trial_id] = int((trial.last_result or {}).get("training_iteration", 0))


def _killer(c, spy: Spy, stop: threading.Event, rng: random.Random, kills: list) -> None:
    while not stop.wait(rng.uniform(1.5, 3.0)) and len(kills) < MAX_KILLS:
        if rng.random() >= P:
            continue
        with spy.lock:  # a trial that has a checkpoint and is not about to finish
            victims = {t: dict(i) for t, i in spy.running.items()
                       if t in spy.saved and i["iteration"] < CLUSTER_EPOCHS - 1}
        if not victims:
            continue
        trial = rng.choice(sorted(victims))
        victim = victims[trial]
        nodes = [n for n in c.worker_nodes if n.node_id == victim["node"]]
        if nodes and rng.random() < P_NODE:
            c.remove_node(nodes[0])  # every trial on it dies with it
            kills.append(("node", trial, time.time()))
            _add_worker(c)           # and a new node joins, as an autoscaler would replace it
        else:
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:  # it ended a moment ago
                continue
            kills.append(("process", trial, time.time()))


def test_trials_survive_killed_processes_and_lost_nodes(cluster, tmp_path, monkeypatch):
    from orchestrator.cli import main

    monkeypatch.chdir(tmp_path)
    spy, stop, kills = Spy(), threading.Event(), []
    killer = threading.Thread(target=_killer, args=(cluster, spy, stop, random.Random(1515), kills), daemon=True)
    killer.start()
    try:
        rc = main(["lab1", "--study", "residual-mlp", "--num-samples", str(CLUSTER_TRIALS), "--max-concurrent", "3",
                   "--max-failures", "-1", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
                   "--set", f"epochs={CLUSTER_EPOCHS}",
                   "--quiet", "--storage", str(tmp_path / "ray_results"), "--mlflow-uri", mlflow_uri(tmp_path)],
                  callbacks=[spy])
    finally:
        stop.set()
        killer.join(timeout=120)
    assert rc == 0, kills
    assert spy.fastest >= PACE, spy.fastest  # the pacing reached the trials, on every node
    assert len(kills) >= 3, f"only {len(kills)} kills: {kills}"

    # Unlimited retries: every trial ran to its last epoch, the search's (one finished run each) and
    # the test phase's (each cell's selected trial trained again: 4 trials in 4 cells, all tested).
    children = runs(tmp_path, "lab1")
    children = children[children["tags.mlflow.parentRunId"].notna()]
    assert len(children) == CLUSTER_TRIALS and set(children.status) == {"FINISHED"}
    assert (children["tags.status"] == "finished").all()
    assert (children["tags.tested"] == "true").all()
    search = set(children["tags.trial_id"])
    assert search <= set(spy.last) and sorted(spy.last.values()) == [CLUSTER_EPOCHS] * 2 * CLUSTER_TRIALS, \
        (spy.last, kills)
    # Each killed trial was retried (a search trial's run says so) and went on from a checkpoint, not epoch 1.
    victims = {trial for _, trial, _ in kills}
    retried = set(children[children["tags.retries"].notna()]["tags.trial_id"])
    assert victims & search <= retried, (victims, retried)
    for kind, trial, when in kills:
        after = [it for t, it, _, at in spy.restarts if t == trial and at > when]
        assert after and after[0] > 1, (kind, trial, after, spy.restarts)
    assert all(it > 1 for _, it, had_checkpoint, _ in spy.restarts if had_checkpoint), spy.restarts
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id, trial in zip(children.run_id, children["tags.trial_id"]):
        steps = collections.Counter(m.step for m in client.get_metric_history(run_id, "val_acc"))
        assert set(steps) == set(range(1, CLUSTER_EPOCHS + 1)), (trial, steps)
        if trial in victims:
            assert steps[1] == 1, (trial, steps)  # never started over
