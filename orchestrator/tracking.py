"""Everything MLflow, from one place: the driver.

One experiment per lab, one parent run per study invocation, one child run per trial (nested in
the UI through the `mlflow.parentRunId` tag). Only the driver writes, so a SQLite tracking store
never sees concurrent writers however many trials run.

Logging stays off Tune's loop: each Tune hook only snapshots the trial and queues its work for ONE
writer thread (still one writer), which also flushes buffered metrics in batches every `flush_s`
seconds. Measured (benchmarks/logging_cost.py): writing in the hooks held Tune's loop for ~20% of a
quick trial's time (figures, SQLite commits); queueing holds it for microseconds.
"""
from __future__ import annotations

import json
import logging
import math
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray import tune

from trainables.config import flatten, to_dict
from trainables.context import FILES_DIR, STATE_FILE
from trainables.plots import trial_figures

log = logging.getLogger(__name__)

# Tune's own bookkeeping in every result: not metrics of the experiment.
TUNE_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid", "done",
             "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint",
             "trial_id", "date", "hostname", "node_ip", "experiment_tag", "config", "checkpoint_path"}
MAX_BATCH = 900  # MLflow accepts up to 1000 metrics per log_batch


def default_uri(launch_dir: Path) -> str:
    """MLflow's own default store, `sqlite:///mlflow.db`, made absolute (trials may change directory)."""
    return f"sqlite:///{(launch_dir / 'mlflow.db').resolve()}"


def git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


@dataclass
class TrialView:
    """What the tracker reads of a Tune trial, copied when Tune calls a hook: Tune mutates its trials
    afterwards, and a later result must not leak into an earlier hook's queued work. Tests and
    benchmarks drive the tracker with these directly, without Ray."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None
    error_file: str = ""

    @classmethod
    def of(cls, trial: Any) -> "TrialView":
        return cls(trial.trial_id, dict(trial.config), dict(trial.last_result or {}), trial.checkpoint,
                   str(getattr(trial, "error_file", "") or ""))


class MlflowTracker(tune.Callback):
    """A Tune callback that owns the study's MLflow runs. Its hooks return at once; `drain()`,
    `rows()` and `close()` wait for the writer. A logging failure does not stop the study: it is
    logged when it happens and raised by `close()` once every run has been ended."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str],
                 params: Mapping[str, Any], resolve: Callable[[Mapping[str, Any]], Any],
                 compare: Callable[[list[dict]], Any] | None = None, metric: str = "val_acc", mode: str = "max",
                 flush_s: float = 2.0, reopen: str | None = None) -> None:
        """`reopen`: the parent run id of an interrupted invocation being resumed (see `_reopen`)."""
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.experiment_id = experiment_id(self.client, experiment)
        self.resolve, self.compare, self.metric, self.mode, self.flush_s = resolve, compare, metric, mode, flush_s
        self.killed_before: dict[str, str] = {}         # trial id -> run the dead driver left behind
        if reopen is None:
            parent = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
            self.parent_id = parent.info.run_id
            self._log_params(self.parent_id, params)
        self.runs: dict[str, str] = {}                 # trial id -> child run id
        self.open: set[str] = set()                     # child runs not yet terminated
        self.history: dict[str, list[dict[str, float]]] = {}
        self.params: dict[str, dict[str, Any]] = {}     # trial id -> sampled params
        self.files: dict[str, dict[str, Any]] = {}      # trial id -> small JSON files of its last checkpoint
        self.pending: dict[str, list[Metric]] = {}
        self.last_flush = time.monotonic()
        self.closed = False
        self.killed: list[str] = []  # child runs the study left unfinished (set by close)
        if reopen is not None:
            self._reopen(reopen)
        self._start_writer()

    # Tune pickles its callbacks into tuner.pkl (for --resume, which brings a tracker of its own):
    # the writer thread and its queue stay out of the pickle; an unpickled tracker gets new ones.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("jobs", "writer", "errors")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start_writer()

    def _start_writer(self) -> None:
        self.errors: list[BaseException] = []
        self.jobs: "queue.Queue[Callable[[], None] | None]" = queue.Queue()
        self.writer = threading.Thread(target=self._write, name="mlflow-writer", daemon=True)
        self.writer.start()

    # ------------------------------------------------------------------ the writer thread
    def _write(self) -> None:
        while True:
            try:
                job, queued = self.jobs.get(timeout=self.flush_s or None), True
            except queue.Empty:  # quiet for flush_s: write what is buffered
                job, queued = self.flush, False
            try:
                if job is None:
                    return
                job()
                if self.pending and time.monotonic() - self.last_flush > self.flush_s:
                    self.flush()
            except Exception as e:  # kept for close(): one failed write must not stop the others
                log.warning("MLflow logging failed: %s", e, exc_info=True)
                self.errors.append(e)
            finally:
                if queued:
                    self.jobs.task_done()

    def _later(self, work: Callable[..., None], *args: Any) -> None:
        self.jobs.put(lambda: work(*args))

    def drain(self) -> None:
        """Waits until the writer has done everything queued so far."""
        if self.writer.is_alive():
            self.jobs.join()

    def _reopen(self, parent_id: str) -> None:
        """Resuming after the driver died: the parent runs again; children the dead driver left
        RUNNING become KILLED (their trials restart from checkpoints in new runs that first copy the
        old metric history); finished children are adopted so the summary covers every trial."""
        self.parent_id = parent_id
        self.client.update_run(parent_id, status="RUNNING")
        children = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                           max_results=10_000)
        for run in children:
            trial_id = run.data.tags.get("trial_id", run.info.run_id)
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, "status", "killed")
                self.client.set_tag(run.info.run_id, "killed_by", "driver lost")
                self.client.set_terminated(run.info.run_id, "KILLED")
                self.killed_before[trial_id] = run.info.run_id
            elif run.info.status == "FINISHED":
                self.runs[trial_id] = run.info.run_id
                self.params[trial_id] = json.loads(run.data.tags.get("sampled", "{}"))
                self.history[trial_id] = [dict(run.data.metrics)]

    # ------------------------------------------------------------------ Tune hooks (Tune's loop)
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._later(self._trial_started, TrialView.of(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._later(self._trial_recovered, TrialView.of(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._later(self._trial_result, TrialView.of(trial), dict(result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._later(self._trial_completed, TrialView.of(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._later(self._trial_failed, TrialView.of(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ the writer's work
    def _trial_started(self, trial: Any) -> None:
        if trial.trial_id in self.runs:  # a retried trial continues its run
            return
        run = self.client.create_run(self.experiment_id, run_name=trial.trial_id,
                                     tags={"mlflow.parentRunId": self.parent_id, "trial_id": trial.trial_id,
                                           "status": "running", "sampled": json.dumps(trial.config, default=str)})
        self.runs[trial.trial_id] = run.info.run_id
        self.open.add(run.info.run_id)
        self.history[trial.trial_id] = []
        self.params[trial.trial_id] = dict(trial.config)
        self._log_params(run.info.run_id, to_dict(self.resolve(trial.config)))
        if (old := self.killed_before.pop(trial.trial_id, None)) is not None:
            self._copy_history(old, run.info.run_id, trial.trial_id)

    def _trial_recovered(self, trial: Any) -> None:
        """A failed trial will be retried from its last checkpoint: its run stays open and continues."""
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self.flush()
            retries = int(self.client.get_run(run_id).data.tags.get("retries", "0")) + 1
            self.client.set_tag(run_id, "retries", str(retries))

    def _trial_result(self, trial: Any, result: dict) -> None:
        metrics = {k: float(v) for k, v in result.items()
                   if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(float(v))}
        history = self.history.setdefault(trial.trial_id, [])
        if not history and "node_id" in result:  # where the trial ran (first result of this run)
            self.client.set_tag(self.runs[trial.trial_id], "node_id", str(result["node_id"]))
        history.append(metrics)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        batch = self.pending.setdefault(self.runs[trial.trial_id], [])
        batch.extend(Metric(k, v, now, step) for k, v in metrics.items())

    def _trial_completed(self, trial: Any) -> None:
        self.flush()
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or run_id not in self.open:
            return
        last = trial.last_result or {}
        finished = bool(last.get("done")) or "test_acc" in last or "test_loss" in last
        self._log_figures(run_id, self.history.get(trial.trial_id, []))
        self._log_checkpoint(run_id, trial, with_model=finished)
        self.client.set_tag(run_id, "status", "finished" if finished else "stopped_early")
        self.client.set_tag(run_id, "stopped_early", str(not finished).lower())
        self._terminate(run_id, "FINISHED")

    def _trial_failed(self, trial: Any) -> None:
        self.flush()
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or run_id not in self.open:
            return
        error = trial.error_file
        self.client.set_tag(run_id, "status", "failed")
        if error:
            self.client.set_tag(run_id, "error_file", error[:5000])
        self._terminate(run_id, "FAILED")

    # ------------------------------------------------------------------ driver-side API
    def rows(self) -> list[dict[str, Any]]:
        """One row per trial that reported: sampled params, best/last metrics, run id."""
        self.drain()
        out = []
        for trial_id, history in self.history.items():
            if not history:
                continue
            last = dict(history[-1])
            values = [h[self.metric] for h in history if self.metric in h]
            if values:
                last[f"best_{self.metric}"] = max(values) if self.mode == "max" else min(values)
                last[self.metric] = last[f"best_{self.metric}"]
            out.append({"trial_id": trial_id, "run_id": self.runs.get(trial_id), "params": self.params.get(trial_id, {}),
                        "metrics": last, "files": self.files.get(trial_id, {})})
        return out

    def close(self, interrupted: bool = False) -> None:
        """Waits for the writer, then ends every run still open: children KILLED (the study stopped
        under them), the parent FINISHED, or KILLED when the study was interrupted. Safe to call
        twice. Raises the first logging failure, if any, after that."""
        if self.closed:
            return
        self.closed = True
        self.drain()
        self.jobs.put(None)
        self.writer.join()
        self._end_runs(interrupted)
        if self.errors:
            raise self.errors[0]

    def _end_runs(self, interrupted: bool) -> None:
        self.flush()
        self.killed = sorted(self.open)
        killed = bool(self.open)
        for run_id in list(self.open):
            self.client.set_tag(run_id, "status", "killed")
            self._terminate(run_id, "KILLED")
        rows = self.rows()
        try:
            self._summarise(rows)
        except Exception as e:  # a summary must never turn a finished study into a failure
            log.warning("study summary failed: %s", e)
        self.client.set_terminated(self.parent_id, "KILLED" if (interrupted or killed) else "FINISHED")

    def flush(self) -> None:
        for run_id, batch in list(self.pending.items()):
            for i in range(0, len(batch), MAX_BATCH):
                self.client.log_batch(run_id, metrics=batch[i:i + MAX_BATCH])
        self.pending.clear()
        self.last_flush = time.monotonic()

    # ------------------------------------------------------------------ helpers
    def _copy_history(self, old: str, new: str, trial_id: str) -> None:
        """The resumed trial's new run starts with the metrics its killed run had logged."""
        metrics: list[Metric] = []
        for key in self.client.get_run(old).data.metrics:
            metrics += self.client.get_metric_history(old, key)
        by_step: dict[int, dict[str, float]] = {}
        for m in metrics:
            by_step.setdefault(m.step, {})[m.key] = m.value
        self.history[trial_id] = [by_step[k] for k in sorted(by_step)]
        for i in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(new, metrics=metrics[i:i + MAX_BATCH])
        self.client.set_tag(new, "resumed_from", old)

    def _terminate(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)
        self.open.discard(run_id)

    def _log_params(self, run_id: str, values: Mapping[str, Any]) -> None:
        params = [Param(k, str(v)[:6000]) for k, v in flatten(values).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])

    def _log_figures(self, run_id: str, history: list[dict[str, float]]) -> None:
        for name, fig in trial_figures(history).items():
            self.client.log_figure(run_id, fig, f"figures/{name}")
            _close(fig)

    def _log_checkpoint(self, run_id: str, trial: Any, with_model: bool) -> None:
        """Files the trainable put in its last checkpoint become artifacts; the model weights and
        resolved config go to `checkpoint/model.pt` (optimizer state left out)."""
        ckpt = trial.checkpoint
        if ckpt is None and (path := (trial.last_result or {}).get("checkpoint_path")):
            from ray.train import Checkpoint

            ckpt = Checkpoint(path)  # a Ray Train checkpoint forwarded by ForwardToTune
        if ckpt is None:
            return
        with ckpt.as_directory() as folder:
            files = Path(folder) / FILES_DIR
            if files.is_dir():
                self.client.log_artifacts(run_id, str(files))
                # Small JSON results (curves, per-class tables) also feed the parent-run comparison.
                self.files[trial.trial_id] = {p.name: json.loads(p.read_text()) for p in files.glob("*.json")
                                              if p.stat().st_size < 2**20}
            state_file = Path(folder) / STATE_FILE
            state = torch.load(state_file, map_location="cpu", weights_only=True) \
                if with_model and state_file.exists() else {}
            if "model" in state:
                with tempfile.TemporaryDirectory() as tmp:
                    torch.save({"model": state["model"], "config": state.get("config", {})}, Path(tmp) / "model.pt")
                    self.client.log_artifact(run_id, str(Path(tmp) / "model.pt"), "checkpoint")

    def _summarise(self, rows: list[dict[str, Any]]) -> None:
        scored = [r for r in rows if self.metric in r["metrics"]]
        if scored:
            pick = max if self.mode == "max" else min
            best = pick(scored, key=lambda r: r["metrics"][self.metric])
            self.client.log_metric(self.parent_id, f"best_{self.metric}", best["metrics"][self.metric])
            if "test_acc" in best["metrics"]:
                self.client.log_metric(self.parent_id, "best_trial_test_acc", best["metrics"]["test_acc"])
            self.client.set_tag(self.parent_id, "best_run_id", best["run_id"] or "")
            self.client.set_tag(self.parent_id, "best_params", str(best["params"]))
        self.client.log_metric(self.parent_id, "trials_reported", len(rows))
        if self.compare is not None and rows:
            fig = self.compare(rows)
            if fig is not None:
                self.client.log_figure(self.parent_id, fig, "figures/comparison.png")
                _close(fig)
        self.client.log_dict(self.parent_id, [{k: v for k, v in r.items() if k != "files"} for r in rows], "trials.json")


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def find_parent(uri: str, experiment: str, tune_experiment: str) -> str | None:
    """The parent run of the study invocation that wrote Tune experiment `tune_experiment`."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.tune_experiment = '{tune_experiment}'", max_results=1)
    return runs[0].info.run_id if runs else None


class Lookup:
    """Read-only questions to MLflow that a study may ask before it runs (driver side)."""

    def __init__(self, uri: str, workdir: Path) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.workdir = workdir  # where downloads go: the study's storage, seen by every node

    def latest_best_run(self, experiment: str, studies: Sequence[str]) -> str | None:
        """The best finished trial run of the most recent invocation of any of `studies`."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        # One query per study: MLflow's search grammar has no IN for tags.
        parents = sorted((r for name in studies for r in self.client.search_runs(
            [exp.experiment_id], f"tags.study = '{name}'", order_by=["attributes.start_time DESC"], max_results=20)
            if r.data.tags.get("kind", "search") == "search"), key=lambda r: r.info.start_time, reverse=True)
        for parent in parents:
            best = parent.data.tags.get("best_run_id")
            if best and self.has_model(best):
                return best
        return None

    def has_model(self, run_id: str) -> bool:
        try:
            return any(a.path.endswith("model.pt") for a in self.client.list_artifacts(run_id, "checkpoint"))
        except Exception:
            return False

    def download_model(self, run_id: str, dest: Path) -> Path:
        """Downloads `checkpoint/model.pt` of a run into dest; FileNotFoundError when it has none."""
        try:
            self.client.get_run(run_id)
        except Exception:
            raise FileNotFoundError(f"no MLflow run {run_id!r}") from None
        if not self.has_model(run_id):
            raise FileNotFoundError(f"MLflow run {run_id} has no checkpoint/model.pt")
        dest.mkdir(parents=True, exist_ok=True)
        # No progress bar: errors from here must stay one line.
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        return Path(self.client.download_artifacts(run_id, "checkpoint/model.pt", str(dest)))


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def ensure_server(uri: str, launch_dir: Path, timeout_s: float = 90.0) -> subprocess.Popen | None:
    """When the tracking URI is a server address on this machine (`http://127.0.0.1:5000`) and
    nothing answers there, start `mlflow server` for the study's lifetime: SQLite store and artifacts
    in the launch folder, artifacts served through the server (so runs logged from anywhere land
    there), bound to that loopback address only. Returns the process to stop, or None."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https") or parsed.hostname not in ("127.0.0.1", "localhost"):
        return None
    port = parsed.port or 80
    if _listening(parsed.hostname, port):
        return None
    log = open(launch_dir / "mlflow-server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", parsed.hostname, "--port", str(port),
                             "--backend-store-uri", default_uri(launch_dir),
                             "--artifacts-destination", str((launch_dir / "mlartifacts").resolve()),
                             "--serve-artifacts", "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}; see {launch_dir / 'mlflow-server.log'}")
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"mlflow server did not answer at {uri} within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---------------------------------------------------------------------------------------- reading back
def _run_record(client: MlflowClient, run: Any) -> dict[str, Any]:
    tags = run.data.tags
    sampled = json.loads(tags["sampled"]) if "sampled" in tags else {}
    return {"run_id": run.info.run_id, "status": run.info.status, "tags": dict(tags), "params": dict(run.data.params),
            "sampled": sampled, "metrics": dict(run.data.metrics), "start_time": run.info.start_time}


def read_invocation(uri: str, lab: str, study: str, parent_id: str | None = None,
                    kind: str = "search") -> dict[str, Any] | None:
    """A study invocation as plain data: its parent run and child runs (params, sampled params,
    final metrics, tags). The newest invocation of `study` unless `parent_id` is given."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(lab)
    if exp is None:
        return None
    if parent_id is not None:
        parent = client.get_run(parent_id)
    else:
        found = [r for r in client.search_runs([exp.experiment_id], f"tags.study = '{study}'",
                                               order_by=["attributes.start_time DESC"], max_results=50)
                 if r.data.tags.get("kind", "search") == kind]
        if not found:
            return None
        parent = found[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=10_000)
    return {"parent": _run_record(client, parent), "children": [_run_record(client, c) for c in children]}


def read_repeats(uri: str, lab: str, parent_id: str) -> dict[str, Any] | None:
    """The `--repeats` invocation that re-ran the best configurations of search `parent_id`."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(lab)
    found = client.search_runs([exp.experiment_id], f"tags.repeats_of = '{parent_id}'",
                               order_by=["attributes.start_time DESC"], max_results=1) if exp else []
    return read_invocation(uri, lab, "", parent_id=found[0].info.run_id) if found else None


def download_figures(uri: str, run_id: str, dest: Path) -> list[Path]:
    """The PNG figures of a run (artifact folder `figures/`), downloaded into dest."""
    client = MlflowClient(tracking_uri=uri)
    try:
        names = [a.path for a in client.list_artifacts(run_id, "figures") if a.path.endswith(".png")]
    except Exception:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # a report's output stays readable
    return [Path(client.download_artifacts(run_id, name, str(dest))) for name in names]


def log_report(uri: str, run_id: str, folder: Path) -> None:
    MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(folder), "report")
