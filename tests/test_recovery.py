"""The pieces of "nothing lost, nothing hidden" that need no Ray: which checkpoint a restored trial
continues from, the invocation record --resume reads, the one-line outcome of a study, and the
filter that keeps Tune's trial tracebacks off the console."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from orchestrator import invocation
from orchestrator.invocation import Outcome, Progress
from orchestrator.options import RunOptions
from orchestrator.recovery import HISTORY_FILE, newest_complete, plain, read_history, write_history
from orchestrator.session import FixedPoints, TrialErrorsOffConsole

FS = pafs.LocalFileSystem()


def _checkpoint(trial: Path, index: int, history: list[dict] | None, torn: bool = False) -> str:
    folder = trial / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"weights")
    if history is not None:
        write_history(FS, str(folder), history)
    if torn:
        (folder / HISTORY_FILE).write_text('{"results": [{"epoch": 1}')  # a kill mid-write
    return str(folder)


def test_a_restored_trial_continues_from_its_newest_checkpoint_that_has_a_history(tmp_path):
    trial = tmp_path / "run_trial_x"
    _checkpoint(trial, 3, [{"epoch": e} for e in (1, 2, 3, 4)])
    newest_with_history = _checkpoint(trial, 4, [{"epoch": e} for e in (1, 2, 3, 4, 5)])
    _checkpoint(trial, 5, None)              # written by the trial, its result never reached the driver
    _checkpoint(trial, 6, None, torn=True)   # the driver died writing its history
    (trial / "result.json").write_text("")
    restart = newest_complete(FS, str(trial))
    assert restart.folder == newest_with_history and restart.index == 4
    assert [r["epoch"] for r in restart.history] == [1, 2, 3, 4, 5]
    assert sorted(Path(p).name for p in restart.stale) == ["checkpoint_000003", "checkpoint_000005",
                                                           "checkpoint_000006"]


def test_without_a_checkpoint_with_history_the_trial_starts_over(tmp_path):
    trial = tmp_path / "run_trial_y"
    _checkpoint(trial, 0, None)
    restart = newest_complete(FS, str(trial))
    assert (restart.folder, restart.index, restart.history) == (None, -1, [])
    assert len(restart.stale) == 1
    assert newest_complete(FS, str(tmp_path / "never_started")) == (restart.__class__(None, -1, [], ()))


def test_history_is_plain_json_without_the_config(tmp_path):
    result = {"epoch": 2, "val_acc": float("nan"), "config": {"depth": 4}, "date": object(), "done": False}
    (tmp_path / "c").mkdir()
    write_history(FS, str(tmp_path / "c"), [plain(result)])
    back = read_history(FS, str(tmp_path / "c"))
    assert back is not None and back[0]["epoch"] == 2 and "config" not in back[0] and isinstance(back[0]["date"], str)
    assert read_history(FS, str(tmp_path / "missing")) is None


def _opts(tmp_path: Path) -> RunOptions:
    return RunOptions(profile="quick", num_samples=2, max_concurrent=1, cpus_per_trial=1.0, gpus_per_trial=None,
                      workers_per_trial=1, mlflow_uri="sqlite:///x.db", storage=str(tmp_path), data_dir=tmp_path,
                      launch=tmp_path, seed=0, ray_address=None, offline=True, max_failures=1, repeats=0,
                      report_dir=None, quiet=True)


def test_resume_finds_the_newest_record_that_has_the_studies(tmp_path):
    storage = str(tmp_path / "ray_results")
    old = invocation.create(storage, "lab1", [("mlp-capacity", {}, {}, {}), ("residual-mlp", {}, {}, {})],
                            _opts(tmp_path))
    old.save()
    new = invocation.create(storage, "lab1", [("residual-mlp", {"epochs": 3}, {}, {})], _opts(tmp_path))
    new.save()
    invocation.create(storage, "lab4", [("ood", {}, {}, {})], _opts(tmp_path)).save()
    assert invocation.newest(storage, "lab1").path == new.path
    assert invocation.newest(storage, "lab1", ["residual-mlp"]).studies[0][1] == {"epochs": 3}
    assert invocation.newest(storage, "lab1", ["mlp-capacity"]).path == old.path
    assert invocation.newest(storage, "lab1", ["resnet"]) is None
    assert invocation.newest(str(tmp_path / "elsewhere"), "lab1") is None


def test_a_record_is_finished_only_when_every_study_finished_every_trial_and_the_report_exists(tmp_path):
    record = invocation.create(str(tmp_path), "lab1", [("a", {}, {}, {}), ("b", {}, {}, {})], _opts(tmp_path))
    record.progress["a"].done = Outcome("lab1/a", trials=2)
    record.save()
    assert not invocation.load(record.path).finished  # b never ran
    record.progress["b"].done = Outcome("lab1/b", trials=2, failed=1, first_error="E", details="f")
    record.report = "r.html"
    assert not record.finished                          # b failed: --resume retries it
    record.progress["b"] = dataclasses.replace(Progress(), done=Outcome("lab1/b", trials=2))
    assert record.finished


def test_a_study_outcome_is_one_line():
    failed = Outcome("lab1/residual-mlp", trials=4, failed=2, first_error="RuntimeError: boom",
                     details="/r/run_trial_1/error.txt")
    assert failed.line() == ("lab1/residual-mlp: 2 of 4 trials failed (first error: RuntimeError: boom; "
                             "details: /r/run_trial_1/error.txt)")
    assert not failed.ok and Outcome("lab1/x", trials=3).ok and not Outcome("lab1/x", interrupted=True).ok
    both = Outcome("lab1/x", trials=4) + Outcome("lab1/x repeats", trials=2, failed=1, first_error="E", details="d")
    assert (both.study, both.trials, both.failed, both.first_error, both.details) == ("lab1/x", 6, 1, "E", "d")
    crashed = Outcome("lab1/x", crashed="ValueError: no", details="/r/err.txt")
    assert crashed.line() == "lab1/x: study failed (ValueError: no; details: /r/err.txt)" and not crashed.ok


def test_tunes_trial_tracebacks_are_kept_off_the_console():
    keep = TrialErrorsOffConsole()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("ray.tune.execution.tune_controller", logging.ERROR, __file__, 1, msg, (), None)

    assert not keep.filter(record("Trial task failed for trial run_trial_1234"))
    assert not keep.filter(record("Trials did not complete: %s"))
    assert keep.filter(record("Restoring the run from the latest experiment state file"))


def test_repeat_points_left_survive_a_restore(tmp_path):
    points = FixedPoints([{"seed": 0}, {"seed": 1}, {"seed": 2}], "val_acc", "max")
    assert points.suggest("t1") == {"seed": 0}
    points.save(str(tmp_path / "s.pkl"))
    restored = FixedPoints([{"seed": 0}, {"seed": 1}, {"seed": 2}], "val_acc", "max")
    restored.restore(str(tmp_path / "s.pkl"))
    assert [restored.suggest("t2"), restored.suggest("t3"), restored.suggest("t4")] == \
        [{"seed": 1}, {"seed": 2}, FixedPoints.FINISHED]


@pytest.mark.parametrize("storage", ["plain", "uri"])
def test_records_live_under_storage_as_a_folder_or_a_uri(tmp_path, storage):
    where = str(tmp_path / "rr") if storage == "plain" else f"file://{tmp_path / 'rr'}"
    record = invocation.create(where, "lab1", [("a", {}, {}, {})], _opts(tmp_path))
    record.save()
    assert (tmp_path / "rr" / invocation.RECORDS).is_dir()
    assert invocation.newest(where, "lab1").studies == [("a", {}, {}, {})]


def test_a_torn_experiment_state_is_set_aside_for_the_previous_one(tmp_path):
    from orchestrator.session import _restorable

    exp = tmp_path / "lab1-residual-mlp-1"
    exp.mkdir()
    assert not _restorable(str(exp))                      # nothing yet: the study starts over in its folder
    (exp / "tuner.pkl").write_bytes(b"tuner")
    assert not _restorable(str(exp))                      # Tune had not written its first state
    (exp / "experiment_state-2026-01-01_10-00-00.json").write_text('{"trial_data": []}')
    (exp / "experiment_state-2026-01-01_11-00-00.json").write_text('{"trial_data": [')  # killed mid-copy
    assert _restorable(str(exp))
    assert sorted(p.name for p in exp.glob("experiment_state-*")) == [
        "experiment_state-2026-01-01_10-00-00.json", "experiment_state-2026-01-01_11-00-00.json.torn"]


def test_a_study_the_driver_could_not_run_leaves_its_traceback_beside_the_record(tmp_path):
    from orchestrator.session import _crashed
    from orchestrator.studies import get_study

    record = invocation.create(str(tmp_path), "lab1", [("resnet", {}, {}, {})], _opts(tmp_path))
    try:
        raise ValueError("the source run's checkpoint is unreadable\nsecond line")
    except ValueError as e:
        outcome = _crashed(get_study("lab1", "resnet"), e, record)
    assert outcome.line().startswith("lab1/resnet: study failed (ValueError: the source run's checkpoint is "
                                     "unreadable second line; details: ")
    assert "Traceback" in Path(outcome.details).read_text() and not outcome.ok


class _Tracker:
    """What CheckpointLedger asks of the resumed study's tracker."""

    def __init__(self, killed_before: dict[str, str]) -> None:
        self.killed_before, self.restored, self.calls = killed_before, {}, []

    def on_trial_start(self, iteration, trials, trial):
        self.calls.append(("start", trial.trial_id))

    def on_trial_complete(self, iteration, trials, trial):
        self.calls.append(("complete", trial.trial_id))


def test_trials_tune_ended_before_the_kill_are_finished_in_mlflow_when_nothing_is_left_to_run():
    """The driver died after Tune ended every trial but before MLflow logged the last end: the resumed
    experiment runs no step (Tune calls no on_step_begin), so the repair comes with its end."""
    from types import SimpleNamespace

    from orchestrator.recovery import CheckpointLedger
    from ray.tune.experiment import Trial

    last = {"training_iteration": 4, "val_acc": 0.9, "final": True}
    trial = SimpleNamespace(trial_id="b3525674", status=Trial.TERMINATED, checkpoint=None, last_result=last)
    tracker = _Tracker({"b3525674": "run-left-running"})
    ledger = CheckpointLedger(tracker)
    ledger.on_experiment_end(trials=[trial])
    assert tracker.calls == [("start", "b3525674"), ("complete", "b3525674")]
    assert tracker.restored["b3525674"] == [last]
    ledger.on_experiment_end(trials=[trial])  # once only
    assert len(tracker.calls) == 2


def test_a_run_killed_after_its_studies_ended_but_before_its_report_is_resumed(tmp_path):
    """The window between the last study's outcome being saved and the report being written: a
    kill there leaves nothing to train, but the report still to write (CI caught it once)."""
    from orchestrator import cli

    storage = str(tmp_path / "ray_results")
    record = invocation.create(storage, "lab1", [("residual-mlp", {}, {}, {}), ("resnet", {}, {}, {})],
                               _opts(tmp_path))
    record.progress["residual-mlp"].done = Outcome("lab1/residual-mlp", trials=2)
    record.save()
    args = cli.build_parser().parse_args(["lab1", "--resume", "--study", "residual-mlp", "--storage", storage])
    with pytest.raises(cli.UsageError, match="nothing to resume"):  # a part of a larger run: its report comes later
        cli.resumed_run(args, storage)
    record.progress["resnet"].done = Outcome("lab1/resnet", trials=2)
    record.save()
    for argv in (["--study", "residual-mlp", "--study", "resnet"], []):
        args = cli.build_parser().parse_args(["lab1", "--resume", *argv, "--storage", storage])
        planned, opts = cli.resumed_run(args, storage)
        assert [p.study.name for p in planned] == ["residual-mlp", "resnet"] and opts.resume == record.path
    record.report = str(tmp_path / "report.md")
    record.save()
    with pytest.raises(cli.UsageError, match="finished every trial: nothing to resume"):
        cli.resumed_run(args, storage)
