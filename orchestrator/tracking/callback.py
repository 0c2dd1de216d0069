"""The Tune callback that owns a study's MLflow runs, from one place: the driver.

One experiment per lab, one parent run per study invocation, one child run per trial (nested in
the UI through the `mlflow.parentRunId` tag). Only the driver writes, so a SQLite tracking store
never sees concurrent writers however many trials run.

Logging stays off Tune's loop: each Tune hook only snapshots the trial and queues its work for ONE
writer thread (still one writer), which also flushes buffered metrics in batches every `flush_s`
seconds. Measured (benchmarks/logging_cost.py): writing in the hooks held Tune's loop for ~20% of a
quick trial's time (figures, SQLite commits); queueing holds it for microseconds.

A trial counts as finished (model.pt logged, tag `status=finished`) only when its last result carries
`trainables.context.FINAL_KEY`, which the trial's context sets on its last report. Tune's own `done`
says nothing about it: Tune also sets `done` on the last result of a trial a scheduler (ASHA) stops.

What a user reads in the UI is decided in the sibling modules: `naming` (child runs named by what they
tried), `results` (which names the metrics get, what becomes a tag, the per-trial summary) and `notes`
(the parent's and children's descriptions, the comparison table, the saved view of the trials).
"""
from __future__ import annotations

import json
import logging
import math
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from trainables.config import flatten, to_dict
from trainables.context import FILES_DIR, FINAL_KEY, STATE_FILE
from trainables.plots import trial_figures

from ..ranking import best_key, rank
from . import notes
from .naming import run_name
from .results import RENAMED, best_so_far, bookkeeping, finals, grad_table, summary, to_log

if TYPE_CHECKING:
    from ..study import Study

log = logging.getLogger(__name__)

# Tune's own bookkeeping in every result: not metrics of the experiment.
TUNE_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid", "done",
             "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint",
             "trial_id", "date", "hostname", "node_ip", "experiment_tag", "config", "checkpoint_path"}
# Result keys never logged as metrics: Tune's, and the trainables' end-of-trial flag.
SKIPPED_KEYS = TUNE_KEYS | {FINAL_KEY}
MAX_BATCH = 900  # MLflow accepts up to 1000 metrics per log_batch
MAX_NOTE = 7900  # characters: MLflow's limit for a tag value (the note is one) is 8000
# The experiment is one of model training (MLflow's own demo sets this tag the same way). MLflow
# 3.17's UI does not read it (see ui_app.py): `mlflow ui --app-name dla` and the links this package
# prints make the choice.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
CHILD_TAGS = ("lab", "study", "profile", "git_commit")  # copied from the parent onto every child
# One value per trial (the test split, evaluated once with the final result; the final values; the
# rank) is logged at step 0: MLflow's charts draw such a metric as bars, one per run, side by side.
ONCE = ("test_",)


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


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


@dataclass(frozen=True)
class Tested:
    """What a test-once study's test phase found for one selected trial (MlflowTracker.add_tests):
    the test trial's last result, its last checkpoint, and whether its weights digest equals the
    searched trial's (None when either has none)."""

    metrics: Mapping[str, Any]
    checkpoint: Any = None
    same_weights: bool | None = None


class MlflowTracker(tune.Callback):
    """A Tune callback that owns the study's MLflow runs. Its hooks return at once; `drain()`,
    `rows()` and `close()` wait for the writer. A logging failure does not stop the study: it is
    logged when it happens and raised by `close()` once every run has been ended."""

    # Attributes added after tuner.pkl files were first written: a tracker unpickled from an older
    # pickle lacks them and reads these class-level defaults (mutable ones are replaced by fresh
    # per-instance copies in __setstate__).
    study_text: notes.StudyText = notes.StudyText()
    parent_name: str = ""
    started_ms: int = 0
    repeats_of: str = ""
    child_tags: Mapping[str, str] = MappingProxyType({})
    names: Mapping[str, str] = MappingProxyType({})        # trial id -> child run name
    file_figures: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # Study.trial_figures
    status: Mapping[str, str] = MappingProxyType({})       # trial id -> its run's status (RUNNING, FINISHED, ...)
    outcome: Mapping[str, str] = MappingProxyType({})      # trial id -> its `status` tag (finished, stopped_early, ...)
    booked: Mapping[str, dict] = MappingProxyType({})      # run id -> bookkeeping tags already set
    pending_tags: Mapping[str, dict] = MappingProxyType({})  # run id -> bookkeeping tags to write
    _FRESH = ("names", "status", "outcome", "booked", "pending_tags")

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str],
                 params: Mapping[str, Any], resolve: Callable[[Mapping[str, Any]], Any],
                 compare: Callable[[list[dict]], Any] | None = None, metric: str = "val_acc", mode: str = "max",
                 flush_s: float = 2.0, reopen: str | None = None, study: "Study | None" = None,
                 trial_figures: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """`reopen`: the parent run id of an interrupted invocation being resumed (see `_reopen`).
        `study`: the Study record, for the parent's description (question, search space, comparison
        table); without it the tracker looks it up by the `lab` (else `experiment`) and `study` tags.
        `trial_figures`: the study's figures of a trial drawn from its JSON files (Study.trial_figures)."""
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.experiment_id = experiment_id(self.client, experiment)
        self.resolve, self.compare, self.metric, self.mode, self.flush_s = resolve, compare, metric, mode, flush_s
        self.file_figures = trial_figures
        self.killed_before: dict[str, str] = {}         # trial id -> run the dead driver left behind
        for name in self._FRESH:
            setattr(self, name, {})
        self.study_text = notes.StudyText(metric=metric, mode=mode)
        self.started_ms = int(time.time() * 1000)
        if reopen is None:
            parent = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
            self.parent_id = parent.info.run_id
            self.parent_name, self.repeats_of = run_name, str(tags.get("repeats_of", ""))
            self.child_tags = {k: str(tags[k]) for k in CHILD_TAGS if k in tags}
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
        # Described on the writer (a define-by-run space is probed by running it), then the parent's
        # description and the saved view exist while the study runs.
        self._later(self._describe, study, dict(tags) if reopen is None else None, dict(params))

    # Tune pickles its callbacks into tuner.pkl (for --resume, which brings a tracker of its own):
    # the writer thread and its queue stay out of the pickle; an unpickled tracker gets new ones.
    # Pickles name the class by its import path: `orchestrator.tracking.MlflowTracker` (tuner.pkl files
    # written before tracking became a package) must keep resolving, see the package's __init__.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("jobs", "writer", "errors")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in self._FRESH:
            if name not in self.__dict__:
                setattr(self, name, {})
        if "study_text" not in state:  # an older pickle: at least the target is the tracker's own
            self.study_text = notes.StudyText(metric=self.metric, mode=self.mode)
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
                if (self.pending or self.pending_tags) and time.monotonic() - self.last_flush > self.flush_s:
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
        parent = self.client.get_run(parent_id)
        self.parent_name, self.repeats_of = parent.info.run_name or "", parent.data.tags.get("repeats_of", "")
        self.started_ms = parent.info.start_time or self.started_ms  # the saved view keeps its name and date
        self.child_tags = {k: parent.data.tags[k] for k in CHILD_TAGS if k in parent.data.tags}
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
                self.names[trial_id] = run.info.run_name or trial_id
            elif run.info.status == "FINISHED":
                self.runs[trial_id] = run.info.run_id
                self.names[trial_id] = run.info.run_name or trial_id
                self.status[trial_id] = "FINISHED"
                self.outcome[trial_id] = run.data.tags.get("status", "finished")
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
    def _describe(self, study: "Study | None", tags: Mapping[str, str] | None, params: Mapping[str, Any]) -> None:
        """What the parent's description says of the study, then its first version and the saved view."""
        if tags is None:  # reopened: the parent's own tags and params
            parent = self.client.get_run(self.parent_id)
            tags, params = parent.data.tags, parent.data.params
        try:
            self.study_text = _study_text(study, tags, params, self.experiment_name(), self.metric, self.mode)
        except Exception as e:  # a description must never stop a study
            log.warning("could not describe the study: %s", e)
        self._write_note(None)
        self._write_view([], created=True)

    def _trial_started(self, trial: Any) -> None:
        if trial.trial_id in self.runs:  # a retried trial continues its run
            return
        old = self.killed_before.pop(trial.trial_id, None)
        if old is not None and trial.trial_id in self.names:  # the killed run keeps the plain name
            name = f"{self.names[trial.trial_id]} (resumed)"
        else:
            name = run_name(trial.config, trial.trial_id, set(self.names.values()))
        tags = {**self.child_tags, "mlflow.parentRunId": self.parent_id, "trial_id": trial.trial_id,
                "status": "running", "sampled": json.dumps(trial.config, default=str)}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.runs[trial.trial_id] = run.info.run_id
        self.names[trial.trial_id] = name
        self.status[trial.trial_id] = "RUNNING"
        self.open.add(run.info.run_id)
        self.history[trial.trial_id] = []
        self.params[trial.trial_id] = dict(trial.config)
        self._log_params(run.info.run_id, to_dict(self.resolve(trial.config)))
        if old is not None:
            self._copy_history(old, run.info.run_id, trial.trial_id)

    def _trial_recovered(self, trial: Any) -> None:
        """A failed trial will be retried from its last checkpoint: its run stays open and continues."""
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self.flush()
            retries = int(self.client.get_run(run_id).data.tags.get("retries", "0")) + 1
            self.client.set_tag(run_id, "retries", str(retries))

    def _trial_result(self, trial: Any, result: dict) -> None:
        """The trial's history keeps the result as reported (figures and comparisons read it); MLflow
        gets it under the names of `results`, bookkeeping as tags."""
        metrics = {k: v if isinstance(v, int) else float(v) for k, v in result.items()  # ints stay ints: "epoch 3"
                   if k not in SKIPPED_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(float(v))}
        run_id = self.runs[trial.trial_id]
        history = self.history.setdefault(trial.trial_id, [])
        history.append(metrics)
        booked = self.booked.setdefault(run_id, {})
        changed = {k: v for k, v in bookkeeping(result).items() if booked.get(k) != v}
        if changed:  # where the trial ran, its world size, ...: written with the next batch
            booked.update(changed)
            self.pending_tags.setdefault(run_id, {}).update(changed)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        logged = {**best_so_far(history, self.metric, self.mode), **dict(sorted(to_log(metrics).items()))}
        final = bool(result.get(FINAL_KEY))
        self.pending.setdefault(run_id, []).extend(
            Metric(k, v, now, 0 if final and k.startswith(ONCE) else step) for k, v in logged.items())

    def _trial_completed(self, trial: Any) -> None:
        self.flush()
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or run_id not in self.open:
            return
        finished = bool((trial.last_result or {}).get(FINAL_KEY))  # see the module docstring
        history = self.history.get(trial.trial_id, [])
        results = self._log_results(run_id, history)
        self._log_figures(run_id, history, self.names.get(trial.trial_id, trial.trial_id))
        self._log_checkpoint(run_id, trial, with_model=finished)
        self._log_file_figures(run_id, trial.trial_id, self.names.get(trial.trial_id, trial.trial_id))
        status = "finished" if finished else "stopped_early"
        self._end_child(trial.trial_id, run_id, "FINISHED", results,
                        {"status": status, "stopped_early": str(not finished).lower()})

    def _trial_failed(self, trial: Any) -> None:
        self.flush()
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or run_id not in self.open:
            return
        results = self._log_results(run_id, self.history.get(trial.trial_id, []))
        error = trial.error_file
        self._end_child(trial.trial_id, run_id, "FAILED", results,
                        {"status": "failed", **({"error_file": error[:5000]} if error else {})})

    def _end_child(self, trial_id: str, run_id: str, status: str, results: Mapping[str, float],
                   tags: Mapping[str, str]) -> None:
        note = notes.child_note(self.names.get(trial_id, trial_id), trial_id, tags["status"], self.parent_name,
                                self.experiment_id, self.parent_id, self.study_text, results)
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in {**tags, "mlflow.note.content": note}.items()])
        self.status[trial_id], self.outcome[trial_id] = status, tags["status"]
        self._terminate(run_id, status)

    # ------------------------------------------------------------------ driver-side API
    def rows(self) -> list[dict[str, Any]]:
        """One row per trial that reported: its run's id, name and status, sampled params, and metrics:
        the last reported values (names as the trainable reported them), the trial's summary
        (`results.summary`: `best_<metric>`, its epoch, final values) and, under `<metric>` itself, the
        trial's best value, which the studies' comparison figures plot."""
        self.drain()
        out = []
        for trial_id, history in self.history.items():
            if not history:
                continue
            last = {**history[-1], **summary(history, self.metric, self.mode)}
            if best_key(self.metric) in last:
                last[self.metric] = last[best_key(self.metric)]
            out.append({"trial_id": trial_id, "run_id": self.runs.get(trial_id),
                        "name": self.names.get(trial_id, trial_id), "status": self.status.get(trial_id),
                        "params": self.params.get(trial_id, {}), "metrics": last, "files": self.files.get(trial_id, {}),
                        "first_epoch": history[0]})  # figures that contrast trials before training moved them
        return out

    def add_tests(self, tests: Mapping[str, "Tested"]) -> None:
        """A test-once study's test phase (orchestrator/session.py), onto the runs of the trials it
        tested, by child run id: the metrics the searched trial did not report (its `test_*`, and
        whatever else the trainable computes only with the test split), the files of the test
        trial's last checkpoint and the figures drawn from them; tags `tested` and
        `test_retrain_same_weights`. The parent's summary is written again by `close()` (a reopened
        tracker) or `summarise()` (one already closed)."""
        by_run = {r: t for t, r in self.runs.items()}
        now = int(time.time() * 1000)
        for run_id, test in tests.items():
            run = self.client.get_run(run_id)
            if run.data.tags.get("tested") == "true":
                continue  # logged before a --resume, which reads the finished test trials again
            reported = {k: float(v) for k, v in test.metrics.items() if k not in SKIPPED_KEYS
                        and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
            new = {k: v for k, v in to_log(reported).items() if k not in run.data.metrics}
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in new.items()])
            trial_id = by_run.get(run_id, run.data.tags.get("trial_id", run_id))
            name = self.names.get(trial_id, run.info.run_name or trial_id)
            self._log_checkpoint(run_id, TrialView(trial_id, {}, dict(test.metrics), test.checkpoint), with_model=False)
            self._log_file_figures(run_id, trial_id, name)
            tags = {"tested": "true", **({"test_retrain_same_weights": str(test.same_weights).lower()}
                                         if test.same_weights is not None else {})}
            if self.history.get(trial_id):
                self.history[trial_id][-1].update(new)
                results = {**{k: v for k, v in self.history[trial_id][-1].items() if k.startswith("test_")},
                           **summary(self.history[trial_id], self.metric, self.mode)}
                tags["mlflow.note.content"] = notes.child_note(
                    name, trial_id, self.outcome.get(trial_id, "finished"), self.parent_name, self.experiment_id,
                    self.parent_id, self.study_text, results)
            # `tested` last: a driver killed before it logs this run again on --resume
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def summarise(self) -> None:
        """The parent's summary, comparison table, description and saved view, written again."""
        try:
            self._summarise(self.rows())
        except Exception as e:  # as in _end_runs: a summary must never turn a finished study into a failure
            log.warning("study summary failed: %s", e, exc_info=True)

    def experiment_name(self) -> str:
        return self.client.get_experiment(self.experiment_id).name

    def ui(self, ui: str | None = None) -> str:
        """The UI's address: `ui`, else the tracking server when the tracking URI is one, else where
        `mlflow ui` serves by default."""
        if ui is None:
            ui = self.uri if self.uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        return ui.rstrip("/")

    def parent_url(self, ui: str | None = None) -> str:
        """The parent run's page in the MLflow UI (its description holds the study's comparison)."""
        return f"{self.ui(ui)}/{notes.run_link(self.experiment_id, self.parent_id)}"

    def view_url(self, ui: str | None = None) -> str:
        """The runs page showing this invocation's trials, ranked, params and results as columns."""
        return f"{self.ui(ui)}/{notes.view_link(self.experiment_id, self.parent_id)}"

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
        by_run = {r: t for t, r in self.runs.items()}
        for run_id in list(self.open):
            self.client.set_tag(run_id, "status", "killed")
            if run_id in by_run:
                self.status[by_run[run_id]], self.outcome[by_run[run_id]] = "KILLED", "killed"
            self._terminate(run_id, "KILLED")
        rows = self.rows()
        try:
            self._summarise(rows)
        except Exception as e:  # a summary must never turn a finished study into a failure
            log.warning("study summary failed: %s", e, exc_info=True)
        self.client.set_terminated(self.parent_id, "KILLED" if (interrupted or killed) else "FINISHED")

    def flush(self) -> None:
        for run_id, batch in list(self.pending.items()):
            tags = [RunTag(k, v) for k, v in self.pending_tags.pop(run_id, {}).items()]
            for i in range(0, len(batch), MAX_BATCH):
                self.client.log_batch(run_id, metrics=batch[i:i + MAX_BATCH], tags=tags if i == 0 else [])
        for run_id, tags in list(self.pending_tags.items()):  # tags of a run with no metric pending
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.pending.clear()
        self.pending_tags.clear()
        self.last_flush = time.monotonic()

    # ------------------------------------------------------------------ helpers
    def _copy_history(self, old: str, new: str, trial_id: str) -> None:
        """The resumed trial's new run starts with the metrics its killed run had logged (the
        history gets the trainable's names back where `results` renamed them)."""
        metrics: list[Metric] = []
        for key in self.client.get_run(old).data.metrics:
            metrics += self.client.get_metric_history(old, key)
        by_step: dict[int, dict[str, float]] = {}
        original = {v: k for k, v in RENAMED.items()}
        for m in metrics:
            by_step.setdefault(m.step, {"epoch": float(m.step)})[original.get(m.key, m.key)] = m.value
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

    def _log_results(self, run_id: str, history: list[dict[str, float]]) -> dict[str, float]:
        """The trial's final values (`results.finals`; its best was logged with every epoch) at step
        0 (see ONCE), and the per-layer gradient norms as a table. Returns the trial's summary with its
        last test values."""
        if not history:
            return {}
        now = int(time.time() * 1000)
        if last := finals(history):
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in last.items()])
        if (table := grad_table(history)) is not None:
            self._log_table(run_id, table, "tables/grad_norms.json")
        return {**{k: v for k, v in history[-1].items() if k.startswith("test_")},
                **summary(history, self.metric, self.mode)}

    def _log_table(self, run_id: str, columns: Mapping[str, list], path: str) -> None:
        """MlflowClient.log_table, except that logging a table again replaces it (log_table appends:
        a reopened parent would list its trials twice)."""
        folder = path.rpartition("/")[0] or None
        if not any(a.path == path for a in self.client.list_artifacts(run_id, folder)):
            self.client.log_table(run_id, dict(columns), path)
            return
        import pandas as pd

        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / path.rpartition("/")[2]
            pd.DataFrame(dict(columns)).to_json(file, orient="split", index=False, date_format="iso")
            self.client.log_artifact(run_id, str(file), folder)

    def _log_figures(self, run_id: str, history: list[dict[str, float]], title: str) -> None:
        """The trial's figures, titled with its run name (a figure downloaded alone still says whose it is)."""
        for name, fig in trial_figures(history).items():
            fig.suptitle(title, fontsize=9)
            fig.subplots_adjust(top=min(fig.subplotpars.top, 0.86))
            self.client.log_figure(run_id, fig, f"figures/{name}")
            _close(fig)

    def _log_file_figures(self, run_id: str, trial_id: str, title: str) -> None:
        """The study's figures drawn from the trial's JSON files (read by _log_checkpoint), titled
        with the run name before the figure's own title."""
        if self.file_figures is None or not self.files.get(trial_id):
            return
        for name, fig in self.file_figures(self.files[trial_id]).items():
            own = fig.get_suptitle()
            fig.suptitle(f"{title}: {own}" if own else title, fontsize=9)
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
                # A post-hoc trial names the trained model it probed (trainables/lab4/shared.py).
                if isinstance(probed := self.files[trial.trial_id].get("probed_model.json"), dict):
                    self.client.set_tag(run_id, "probed_model", str(probed.get("model", ""))[:5000])
            state_file = Path(folder) / STATE_FILE
            state = torch.load(state_file, map_location="cpu", weights_only=True) \
                if with_model and state_file.exists() else {}
            if "model" in state:
                with tempfile.TemporaryDirectory() as tmp:
                    saved = {"model": state["model"], "config": state.get("config", {}),
                             **({"ae": state["ae"]} if "ae" in state else {})}  # Lab 4 ood's autoencoder
                    torch.save(saved, Path(tmp) / "model.pt")
                    self.client.log_artifact(run_id, str(Path(tmp) / "model.pt"), "checkpoint")

    def _summarise(self, rows: list[dict[str, Any]]) -> None:
        ranked = rank(rows, self.metric, self.mode)  # orchestrator.ranking: ties go to the lowest trial id
        top = ranked[0] if ranked else None
        if top is not None:
            self.client.log_metric(self.parent_id, best_key(self.metric), top["metrics"][best_key(self.metric)])
            if "test_acc" in top["metrics"]:
                self.client.log_metric(self.parent_id, "best_trial_test_acc", top["metrics"]["test_acc"])
            self.client.log_batch(self.parent_id, tags=[
                RunTag("best_run_id", top["run_id"] or ""), RunTag("best_run_name", top["name"]),
                RunTag("best_params", str(top["params"]))])
        now = int(time.time() * 1000)
        for i, row in enumerate(ranked, 1):  # the saved view sorts on it: the UI's order is the ranking's
            self.client.log_batch(row["run_id"], metrics=[Metric(notes.RANK_METRIC, float(i), now, 0)])
        self.client.log_metric(self.parent_id, "trials_reported", len(rows))
        if self.compare is not None and rows:
            fig = self.compare(rows)
            if fig is not None:
                self.client.log_figure(self.parent_id, fig, "figures/comparison.png")
                _close(fig)
        self.client.log_dict(self.parent_id, [{k: v for k, v in r.items() if k not in ("files", "first_epoch")}
                                              for r in rows], "trials.json")
        headers, table = notes.comparison(self.study_text, rows)
        if table:
            self._log_table(self.parent_id, notes.table_columns(headers, table), "comparison.json")
        self._write_note(rows)
        self._write_view(rows)
        if self.repeats_of:
            self._note_repeats(rows)

    def _write_note(self, rows: list[dict[str, Any]] | None) -> None:
        """The parent's description (notes.parent_note); a repeats section already there is kept."""
        counts: dict[str, int] = {}
        for r in rows or []:
            word = self.outcome.get(r["trial_id"], "running").replace("_", " ")
            counts[word] = counts.get(word, 0) + 1
        note = notes.parent_note(self.study_text, self.experiment_id, self.parent_id, rows, counts)
        if self.repeats_of:
            note = f"Repeats of [the search]({notes.run_link(self.experiment_id, self.repeats_of)}).\n\n{note}"
        old = self.client.get_run(self.parent_id).data.tags.get("mlflow.note.content", "")
        if notes.REPEATS_MARK in old:
            note = notes.with_repeats(note, old.split(notes.REPEATS_MARK, 1)[1])
        self.client.set_tag(self.parent_id, "mlflow.note.content", _fit_note(note))

    def _note_repeats(self, rows: list[dict[str, Any]]) -> None:
        """mean ± std over seeds, in this invocation's note and in the note of the search it repeats."""
        section = notes.repeats_section(self.study_text, self.experiment_id, self.parent_id, rows)
        if not section:
            return
        groups = notes.repeats_groups(self.study_text, rows)
        found = notes.verdict_lines(self.study_text, rows)
        for run_id in (self.parent_id, self.repeats_of):
            note = self.client.get_run(run_id).data.tags.get("mlflow.note.content", "")
            self.client.set_tag(run_id, "mlflow.note.content", _fit_note(notes.with_repeats(note, section)))
            # per cell: mean ± std and the 95% interval over seeds; the verdicts, one tag each
            self.client.log_dict(run_id, {"cells": groups, "findings": found}, "repeats.json")
            self.client.log_batch(run_id, tags=[RunTag(f"finding_{i}", line[:5000]) for i, line in enumerate(found, 1)])

    def _write_view(self, rows: list[dict[str, Any]], created: bool = False) -> None:
        """The saved view of this invocation's trials (experiment tag, listed in the runs page's Views)."""
        text = self.study_text
        params = list(dict.fromkeys([*text.space, *(k for r in rows for k in r["params"])]))
        best = best_key(text.metric)
        metrics = [best, f"{best}_epoch", *notes.other_metrics(text, rows), notes.RANK_METRIC]
        state = notes.view_state(self.parent_id, text, params, metrics)
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started_ms / 1000))
        name = f"{self.parent_name or self.parent_id[:8]} {stamp}: trials by {best}"
        now = int(time.time() * 1000)
        self.client.set_experiment_tag(self.experiment_id, f"{notes.VIEW_TAG_PREFIX}{self.parent_id}",
                                       notes.view_tag(name, state, self.started_ms, self.started_ms if created else now))


def _fit_note(note: str) -> str:
    """A note within MLflow's tag limit: table rows are dropped from the end, and the cut said."""
    if len(note) <= MAX_NOTE:
        return note
    lines = note.splitlines()
    cut = "\n\n*(table cut to fit; the whole table is the run's `comparison.json`)*\n"
    while lines and len("\n".join(lines)) + len(cut) > MAX_NOTE:
        lines.pop()
    return "\n".join(lines) + cut


def _study_text(study: "Study | None", tags: Mapping[str, str], params: Mapping[str, Any], experiment: str,
                metric: str, mode: str) -> notes.StudyText:
    """The plain facts of the study for its description; the Study record is found by its tags when
    the session did not pass it."""
    from ..studies import describe_space, get_study

    if study is None and tags.get("study"):
        try:
            study = get_study(tags.get("lab") or experiment, tags["study"])
        except KeyError:
            study = None
    pinned = tuple(p for p in str(params.get("pinned", "")).split(",") if p and p != "-")
    if study is None:
        return notes.StudyText(metric=metric, mode=mode, pinned=pinned)
    return notes.StudyText(question=study.question, space=describe_space(study.space), pinned=pinned, metric=metric,
                           mode=mode, report_by=tuple(study.report_by), report_metrics=tuple(study.report_metrics),
                           findings=tuple(study.findings), test_once=study.test_once)


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
