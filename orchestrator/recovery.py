"""Resuming a study whose driver was killed at any moment: every restored trial continues from a
checkpoint that exists, and its MLflow run holds each epoch exactly once.

Why Tune's own restore is not enough (Ray 2.60, read in ray/tune/execution/tune_controller.py,
experiment_state.py and ray/train/_internal/checkpoint_manager.py): `Tuner.restore` reads the
experiment state, a snapshot that the driver writes to its staging folder and copies to storage
asynchronously, at most every ~10 s or once a trial has checkpointed `num_to_keep` times since the
last copy. Checkpoints are deleted from storage at once, when Tune registers a newer one
(`CheckpointConfig(num_to_keep=2)`). A driver killed after such a deletion and before the next
snapshot reached storage leaves a state naming a checkpoint that is gone: the restore fails ("does
not exist on storage anymore"), the retry fails the same way, and the trial is dropped. Nor does the
snapshot say which epochs the killed MLflow run holds (the tracker writes on its own thread).

The design: the newest complete checkpoint on storage is the truth, not the snapshot. Keeping what
the snapshot still names instead would mean deleting checkpoints only once no snapshot on storage
names them, i.e. re-implementing Tune's retention around its private snapshot timing, and the
history question would remain. So:

- `CheckpointLedger` (a Tune callback, driver side) writes into every checkpoint folder the trial's
  results up to that checkpoint (`dla_history.json`). Tune calls `on_checkpoint` before it registers
  the checkpoint, and only a registration deletes older ones, so the newest registered checkpoint
  (which is never deleted) always has its history: a checkpoint with a history is complete.
- On `--resume`, before any restored trial starts (the first `on_step_begin`), each unfinished
  trial is repaired to the newest checkpoint folder that has a history: Tune's checkpoint list is
  that one checkpoint, the checkpoint index continues after it (new folders never mix with stale
  ones), and every other checkpoint folder of the trial is removed (older ones are superseded,
  newer ones lack a history: unregistered or half written). No such folder: the trial starts over.
- `ResumingTracker` gives the trial's new MLflow run exactly that history (replayed as results),
  instead of copying whatever the killed run had flushed. Trials the dead driver finished in Tune
  but not yet in MLflow are completed in MLflow from their last checkpoint.

Ray Train (DDP) trials keep their checkpoints in Ray Train's own folder: they are left to Train.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow.fs as pafs
from ray import tune
from ray.train import Checkpoint
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune.experiment import Trial

from .tracking import MlflowTracker, TrialView

log = logging.getLogger(__name__)

HISTORY_FILE = "dla_history.json"
CHECKPOINT_DIR = re.compile(r"checkpoint_(\d{6})$")  # Tune's StorageContext._make_checkpoint_dir_name


def plain(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result as JSON-safe plain values, without its config (the trial has that)."""
    return json.loads(json.dumps({k: v for k, v in result.items() if k != "config"}, default=str))


def write_history(fs: pafs.FileSystem, folder: str, history: list[dict[str, Any]]) -> None:
    """The results up to a checkpoint, beside it (written whole, then renamed into place)."""
    tmp = f"{folder}/.{HISTORY_FILE}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps({"results": history}).encode())
    fs.move(tmp, f"{folder}/{HISTORY_FILE}")


def read_history(fs: pafs.FileSystem, folder: str) -> list[dict[str, Any]] | None:
    """The results a checkpoint folder was written with; None when it has none (or a torn one)."""
    try:
        with fs.open_input_stream(f"{folder}/{HISTORY_FILE}") as f:
            results = json.loads(f.read()).get("results")
    except (OSError, ValueError, AttributeError):
        return None
    return results if isinstance(results, list) and results and all(isinstance(r, dict) for r in results) else None


@dataclass(frozen=True)
class Restart:
    """Where a restored trial continues: a checkpoint folder (None: from the start), its index, the
    results reported up to it; and the trial's other checkpoint folders (to remove)."""

    folder: str | None
    index: int
    history: list[dict[str, Any]]
    stale: tuple[str, ...]


def newest_complete(fs: pafs.FileSystem, trial_folder: str) -> Restart:
    """The trial's newest checkpoint folder that has its history."""
    infos = fs.get_file_info(pafs.FileSelector(trial_folder, allow_not_found=True))
    folders = sorted(((int(m.group(1)), i.path) for i in infos
                      if i.type == pafs.FileType.Directory and (m := CHECKPOINT_DIR.match(i.base_name))), reverse=True)
    for index, folder in folders:
        history = read_history(fs, folder)
        if history is not None:
            return Restart(folder, index, history, tuple(p for _, p in folders if p != folder))
    return Restart(None, -1, [], tuple(p for _, p in folders))


class CheckpointLedger(tune.Callback):
    """Writes each checkpoint's history (see the module docstring) and, on resume, repairs the
    restored trials before they start. `tracker`: the resumed study's ResumingTracker (None for a
    new study); `managed`: False for Ray Train trials (their checkpoints are Train's). Also notes
    the storage folder of every trial that ended in error (`failed`)."""

    def __init__(self, tracker: "ResumingTracker | None" = None, managed: bool = True) -> None:
        self.tracker, self.managed = tracker, managed
        self.repair_pending = tracker is not None
        self.history: dict[str, list[dict[str, Any]]] = {}   # trial id -> results since its checkpoint's start
        self.restarts: dict[str, Restart] = {}               # trial id -> how it was repaired (tests, logs)
        self.failed: dict[str, str] = {}                     # trial id -> its storage folder

    # Pickled into tuner.pkl with the run config; a resumed study brings a new ledger.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "tracker": None, "history": {}, "restarts": {}, "failed": {}}

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.repair_pending:
            return
        self.repair_pending = False
        for trial in trials:
            try:
                self._repair(trial, iteration, trials)
            except Exception as e:  # a trial that cannot be repaired is left to Tune (and its retries)
                log.warning("could not repair restored trial %s: %s", trial, e, exc_info=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # A driver killed after Tune had ended every trial (but before MLflow heard of the last ends)
        # is resumed into an experiment with nothing left to run: Tune then runs no step at all, so
        # the repair happens here, before the tracker (the next callback) closes the study.
        self.on_step_begin(0, trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Starting, retried or restored: it continues from its latest checkpoint, with that history.
        ckpt = trial.checkpoint
        self.history[trial.trial_id] = (read_history(ckpt.filesystem, ckpt.path) or []) if ckpt is not None else []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.managed:
            self.history.setdefault(trial.trial_id, []).append(plain(result))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        if not self.managed:
            return
        try:  # never raise here: Tune would then skip registering the checkpoint
            write_history(checkpoint.filesystem, checkpoint.path, self.history.get(trial.trial_id, []))
        except Exception as e:
            log.warning("could not write the history of %s: %s", checkpoint.path, e)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed[trial.trial_id] = str(trial.path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed.pop(trial.trial_id, None)

    # ------------------------------------------------------------------ resume
    def _repair(self, trial: Any, iteration: int, trials: list) -> None:
        if trial.status == Trial.TERMINATED:
            self._finish_in_mlflow(trial, iteration, trials)
            return
        if trial.status not in (Trial.PENDING, Trial.PAUSED) or not self.managed:
            return
        fs = trial.storage.storage_filesystem
        restart = newest_complete(fs, trial.path)
        for folder in restart.stale:
            fs.delete_dir(folder)
        manager = _CheckpointManager(trial.run_metadata.checkpoint_manager.checkpoint_config)
        if restart.folder is not None:
            manager.register_checkpoint(_TrainingResult(Checkpoint(restart.folder, fs), dict(restart.history[-1])))
        trial.run_metadata.checkpoint_manager = manager
        trial.run_metadata.last_result = dict(restart.history[-1]) if restart.history else {}
        trial.storage.current_checkpoint_index = restart.index  # the next checkpoint goes into a new folder
        trial.invalidate_json_state()
        self.restarts[trial.trial_id] = restart
        self.tracker.restored[trial.trial_id] = restart.history
        log.info("trial %s resumes from %s", trial, restart.folder or "the start")

    def _finish_in_mlflow(self, trial: Any, iteration: int, trials: list) -> None:
        """A trial the dead driver had finished in Tune whose MLflow run it left open (now KILLED):
        its new run gets the history of its last checkpoint and is ended as the tracker ends any."""
        if trial.trial_id not in self.tracker.killed_before:
            return
        ckpt = trial.checkpoint
        history = (read_history(ckpt.filesystem, ckpt.path) or []) if ckpt is not None else []
        last = plain(trial.last_result or {})
        if last and (not history or last.get("training_iteration", 0) > history[-1].get("training_iteration", 0)):
            history = [*history, last]  # a last result reported without a checkpoint
        self.tracker.restored[trial.trial_id] = history
        self.tracker.on_trial_start(iteration, trials, trial)
        self.tracker.on_trial_complete(iteration, trials, trial)


class ResumingTracker(MlflowTracker):
    """The tracker of a resumed study: a restored trial's new run starts with the results of the
    checkpoint it continues from (`restored`, filled by CheckpointLedger before the trial starts),
    replayed as the live results are logged, and is tagged `resumed_from` its killed run; its
    killed run's metrics are not copied (they may run ahead of or behind that checkpoint).

    A subclass here rather than a change in orchestrator/tracking (owned elsewhere): it overrides
    `_trial_started` and `_copy_history` and replays through `_trial_result`. Once the tracker takes
    a replay history itself, this class goes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.restored: dict[str, list[dict[str, Any]]] = {}  # trial id -> results to replay into its new run
        self._replaying: set[str] = set()
        super().__init__(*args, **kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("restored", {})
        self.__dict__.setdefault("_replaying", set())

    def _trial_started(self, trial: TrialView) -> None:
        history = self.restored.pop(trial.trial_id, None) if trial.trial_id not in self.runs else None
        if history is None:
            super()._trial_started(trial)
            return
        self._replaying.add(trial.trial_id)
        try:
            super()._trial_started(trial)
        finally:
            self._replaying.discard(trial.trial_id)
        for result in history:
            self._trial_result(trial, result)

    def _copy_history(self, old: str, new: str, trial_id: str) -> None:
        if trial_id in self._replaying:
            self.client.set_tag(new, "resumed_from", old)
            return
        super()._copy_history(old, new, trial_id)
