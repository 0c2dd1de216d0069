"""The MLflow tracker's run life cycle, driven like Tune drives it (no Ray needed)."""
from __future__ import annotations


import mlflow
import pytest

from orchestrator.tracking import MlflowTracker, TrialView
from tests.conftest import mlflow_uri
from trainables.config import from_dict
from trainables.lab1.classifier import Lab1Config


@pytest.fixture
def tracker(tmp_path):
    return MlflowTracker(mlflow_uri(tmp_path), "lab1", "residual-mlp [quick]", tags={"study": "residual-mlp"},
                         params={"profile": "quick"}, resolve=lambda c: from_dict(Lab1Config, c), flush_s=0.0)


def _feed(tracker, trial, epochs, done):
    tracker.on_trial_start(0, [], trial)
    for e in range(1, epochs + 1):
        result = {"epoch": e, "val_acc": 0.1 * e, "train_loss": 1.0 / e, "pid": 123, "timestamp": 1,
                  "training_iteration": e, "done": done and e == epochs}
        if done and e == epochs:
            result["test_acc"] = 0.5
        trial.last_result = result
        tracker.on_trial_result(0, [], trial, result)


def _run(tmp_path, tracker, trial_id):
    return mlflow.MlflowClient(mlflow_uri(tmp_path)).get_run(tracker.runs[trial_id])


def test_finished_stopped_failed_and_killed_trials(tmp_path, tracker):
    done, stopped, failed, killed = (TrialView(f"t{i}", {"depth": 2 ** i}) for i in range(4))
    _feed(tracker, done, 3, done=True)
    tracker.on_trial_complete(0, [], done)
    _feed(tracker, stopped, 1, done=False)          # ASHA stopped it after one epoch
    tracker.on_trial_complete(0, [], stopped)
    _feed(tracker, failed, 2, done=False)
    tracker.on_trial_error(0, [], failed)
    _feed(tracker, killed, 1, done=False)            # still running when the study is interrupted
    tracker.close(interrupted=True)

    runs = {t: _run(tmp_path, tracker, t) for t in ("t0", "t1", "t2", "t3")}
    assert [runs[t].info.status for t in ("t0", "t1", "t2", "t3")] == ["FINISHED", "FINISHED", "FAILED", "KILLED"]
    assert runs["t0"].data.tags["stopped_early"] == "false"
    assert runs["t1"].data.tags["stopped_early"] == "true"
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    assert client.get_run(tracker.parent_id).info.status == "KILLED"
    # Params: the full resolved config, not only the sampled values; metrics: no Tune bookkeeping.
    assert runs["t0"].data.params["depth"] == "1" and runs["t0"].data.params["model"] == "mlp"
    assert "pid" not in runs["t0"].data.metrics and "timestamp" not in runs["t0"].data.metrics
    assert [m.step for m in client.get_metric_history(runs["t0"].info.run_id, "val_acc")] == [1, 2, 3]
    assert runs["t0"].data.tags["mlflow.parentRunId"] == tracker.parent_id


def test_parent_summary_and_clean_close(tmp_path, tracker):
    for i, acc in enumerate((0.3, 0.9)):
        trial = TrialView(f"t{i}", {"depth": i + 1})
        tracker.on_trial_start(0, [], trial)
        trial.last_result = {"epoch": 1, "val_acc": acc, "test_acc": acc - 0.1, "done": True}
        tracker.on_trial_result(0, [], trial, trial.last_result)
        tracker.on_trial_complete(0, [], trial)
    tracker.on_experiment_end([])
    tracker.close()  # idempotent
    parent = mlflow.MlflowClient(mlflow_uri(tmp_path)).get_run(tracker.parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_acc"] == 0.9
    assert parent.data.tags["best_run_id"] == tracker.runs["t1"]


def test_a_retried_trial_continues_its_run(tmp_path, tracker):
    trial = TrialView("t0", {"depth": 1})
    tracker.on_trial_start(0, [], trial)
    tracker.drain()
    first = tracker.runs["t0"]
    tracker.on_trial_start(0, [], trial)
    tracker.drain()
    assert tracker.runs["t0"] == first and len(tracker.runs) == 1


def test_hooks_queue_their_work_and_keep_a_snapshot_of_the_trial(tmp_path, tracker, monkeypatch):
    import threading

    release, finished = threading.Event(), []
    log_params = tracker._log_params

    def slow_log_params(*args):  # the writer is stuck here until released
        release.wait(10)
        log_params(*args)
        finished.append(True)

    monkeypatch.setattr(tracker, "_log_params", slow_log_params)
    trial = TrialView("t0", {"depth": 2})
    tracker.on_trial_start(0, [], trial)
    for e in (1, 2):
        trial.last_result = {"epoch": e, "val_acc": 0.4 * e, "done": e == 2, "test_acc": 0.7}
        tracker.on_trial_result(0, [], trial, dict(trial.last_result))
    tracker.on_trial_complete(0, [], trial)
    trial.last_result = {"epoch": 99}  # Tune mutates its trials later: the queued work must not see it
    assert not finished  # every hook returned while the writer was still busy with the first one
    release.set()
    assert tracker.rows()[0]["metrics"]["val_acc"] == pytest.approx(0.8)
    tracker.close()
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    run = client.get_run(tracker.runs["t0"])
    assert run.info.status == "FINISHED" and run.data.tags["stopped_early"] == "false"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_acc")] == pytest.approx([0.4, 0.8])


def test_a_logging_failure_is_raised_at_close_after_the_runs_end(tmp_path, tracker):
    tracker.on_trial_start(0, [], TrialView("bad", {"no_such_key": 1}))  # resolve() fails in the writer
    good = TrialView("good", {"depth": 1})
    _feed(tracker, good, 2, done=True)
    tracker.on_trial_complete(0, [], good)
    with pytest.raises(Exception, match="no_such_key"):
        tracker.close()
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    assert client.get_run(tracker.runs["good"]).info.status == "FINISHED"
    assert client.get_run(tracker.parent_id).info.status == "KILLED"  # "bad"'s run was left open


def test_the_tracker_pickles_as_tune_saves_it_and_still_logs_after(tmp_path, tracker):
    from ray import cloudpickle

    copy = cloudpickle.loads(cloudpickle.dumps(tracker))  # Tune writes its callbacks into tuner.pkl
    trial = TrialView("t0", {"depth": 1})
    _feed(copy, trial, 1, done=True)
    copy.on_trial_complete(0, [], trial)
    assert copy.rows()[0]["metrics"]["val_acc"] == pytest.approx(0.1)
    copy.close()
    tracker.close()
