"""The MLflow tracker's run life cycle, driven like Tune drives it (no Ray needed)."""
from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path

import mlflow
import pytest
import torch
from ray import tune

from orchestrator.tracking import MlflowTracker, TrialView
from tests.conftest import mlflow_uri
from trainables.config import from_dict
from trainables.context import FINAL_KEY, write_checkpoint
from trainables.lab1.classifier import Lab1Config


def _tracker(tmp_path, **kw):
    # resolve is a partial, not a lambda: the tracker then pickles with plain pickle, as in tuner.pkl
    return MlflowTracker(mlflow_uri(tmp_path), "lab1", "residual-mlp [quick]", tags={"study": "residual-mlp"},
                         params={"profile": "quick"}, resolve=functools.partial(from_dict, Lab1Config), flush_s=0.0,
                         **kw)


@pytest.fixture
def tracker(tmp_path):
    return _tracker(tmp_path)


def _feed(tracker, trial, epochs, done, stopped=False, test_metric=True):
    """`done`: the trial ran to its end (its context flags the last report with FINAL_KEY);
    `stopped`: a scheduler stopped it. Either way Tune sets `done` on the last result."""
    tracker.on_trial_start(0, [], trial)
    for e in range(1, epochs + 1):
        result = {"epoch": e, "val_acc": 0.1 * e, "train_loss": 1.0 / e, "pid": 123, "timestamp": 1,
                  "training_iteration": e, "done": (done or stopped) and e == epochs}
        if done and e == epochs:
            result[FINAL_KEY] = 1
            if test_metric:
                result["test_acc"] = 0.5
        trial.last_result = result
        tracker.on_trial_result(0, [], trial, result)


def _checkpoint(folder):
    """A trial's last checkpoint as the trainables lay it out: state.pt (model, config, optimizer) and files/."""
    write_checkpoint(folder, {"model": {"w": torch.ones(2)}, "config": {"depth": 1}, "optimizer": {"lr": 0.1}},
                     {"summary.json": b'{"auroc": 0.9}'})
    return tune.Checkpoint.from_directory(str(folder))


def _run(tmp_path, tracker, trial_id):
    return mlflow.MlflowClient(mlflow_uri(tmp_path)).get_run(tracker.runs[trial_id])


def test_finished_stopped_failed_and_killed_trials(tmp_path, tracker):
    done, stopped, failed, killed = (TrialView(f"t{i}", {"depth": 2 ** i}) for i in range(4))
    _feed(tracker, done, 3, done=True)
    tracker.on_trial_complete(0, [], done)
    _feed(tracker, stopped, 1, done=False, stopped=True)  # ASHA stopped it after one epoch
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
        trial.last_result = {"epoch": 1, "val_acc": acc, "test_acc": acc - 0.1, "done": True, FINAL_KEY: 1}
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
        trial.last_result = {"epoch": e, "val_acc": 0.4 * e, "done": e == 2, "test_acc": 0.7,
                             **({FINAL_KEY: 1} if e == 2 else {})}
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


def _artifacts(client, run_id, path=None):
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_the_final_flag_not_a_test_metric_says_a_trial_finished(tmp_path, tracker):
    """A task whose last report has no test metric still gets its model; a trial a scheduler stopped
    (Tune marks its last result `done` too) is stopped early, with its files but no model."""
    final, stopped = TrialView("t0", {"depth": 1}), TrialView("t1", {"depth": 2})
    _feed(tracker, final, 2, done=True, test_metric=False)
    final.checkpoint = _checkpoint(tmp_path / "ckpt0")
    tracker.on_trial_complete(0, [], final)
    _feed(tracker, stopped, 1, done=False, stopped=True)
    stopped.checkpoint = _checkpoint(tmp_path / "ckpt1")
    tracker.on_trial_complete(0, [], stopped)
    tracker.close()

    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    done_run, stopped_run = (client.get_run(tracker.runs[t]) for t in ("t0", "t1"))
    assert "test_acc" not in done_run.data.metrics
    assert done_run.info.status == "FINISHED" and done_run.data.tags["status"] == "finished"
    assert done_run.data.tags["stopped_early"] == "false"
    assert _artifacts(client, done_run.info.run_id, "checkpoint") == {"checkpoint/model.pt"}
    assert "summary.json" in _artifacts(client, done_run.info.run_id)
    model = torch.load(client.download_artifacts(done_run.info.run_id, "checkpoint/model.pt", str(tmp_path / "dl")),
                       weights_only=True)
    assert set(model) == {"model", "config"}  # optimizer state left out
    assert stopped_run.info.status == "FINISHED" and stopped_run.data.tags["status"] == "stopped_early"
    assert stopped_run.data.tags["stopped_early"] == "true"
    assert not _artifacts(client, stopped_run.info.run_id, "checkpoint")
    assert "summary.json" in _artifacts(client, stopped_run.info.run_id)
    # The flag is bookkeeping, never a metric.
    assert FINAL_KEY not in done_run.data.metrics and not client.get_metric_history(done_run.info.run_id, FINAL_KEY)
    assert all(FINAL_KEY not in r["metrics"] for r in tracker.rows())


@pytest.mark.parametrize("order", [("t0", "t1", "t2"), ("t2", "t1", "t0"), ("t1", "t2", "t0")])
def test_summary_and_rows_rank_with_orchestrator_ranking(tmp_path, order):
    """best_run_id: the best value of each trial's history; a tie goes to the lowest trial id, whatever
    order the trials reported in."""
    tracker = _tracker(tmp_path)
    histories = {"t0": [0.5, 0.8, 0.6], "t1": [0.8, 0.7], "t2": [0.3, float("nan"), 0.4]}
    for trial_id in order:
        trial = TrialView(trial_id, {"depth": 1})
        tracker.on_trial_start(0, [], trial)
        for e, acc in enumerate(histories[trial_id], 1):
            trial.last_result = {"epoch": e, "val_acc": acc, "done": e == len(histories[trial_id])}
            tracker.on_trial_result(0, [], trial, dict(trial.last_result))
        tracker.on_trial_complete(0, [], trial)
    rows = {r["trial_id"]: r["metrics"] for r in tracker.rows()}
    assert rows["t0"]["val_acc"] == rows["t0"]["best_val_acc"] == 0.8 and rows["t2"]["val_acc"] == 0.4
    tracker.close()
    parent = mlflow.MlflowClient(mlflow_uri(tmp_path)).get_run(tracker.parent_id)
    assert parent.data.tags["best_run_id"] == tracker.runs["t0"]
    assert parent.data.metrics["best_val_acc"] == 0.8


def test_a_min_mode_study_ranks_by_the_lowest_value(tmp_path):
    tracker = _tracker(tmp_path, metric="val_loss", mode="min")
    for trial_id, losses in (("t0", [0.9, 0.5]), ("t1", [0.7, 0.6])):
        trial = TrialView(trial_id, {"depth": 1})
        tracker.on_trial_start(0, [], trial)
        for e, loss in enumerate(losses, 1):
            tracker.on_trial_result(0, [], trial, {"epoch": e, "val_loss": loss})
        tracker.on_trial_complete(0, [], trial)  # trials still running when the study ends are not ranked
    assert {r["trial_id"]: r["metrics"]["best_val_loss"] for r in tracker.rows()} == {"t0": 0.5, "t1": 0.6}
    tracker.close()
    parent = mlflow.MlflowClient(mlflow_uri(tmp_path)).get_run(tracker.parent_id)
    assert parent.data.tags["best_run_id"] == tracker.runs["t0"] and parent.data.metrics["best_val_loss"] == 0.5


def test_a_tuner_pkl_naming_the_old_module_path_unpickles_to_a_working_tracker(tmp_path, tracker):
    """tuner.pkl files written while the tracker lived in orchestrator/tracking.py name the class
    `orchestrator.tracking.MlflowTracker`: such a pickle loads, and its writer thread restarts."""
    state = pickle.dumps(tracker.__getstate__(), protocol=2)
    assert state[:2] == b"\x80\x02" and state[-1:] == b"."
    # PROTO 2, GLOBAL by the old path, NEWOBJ with no arguments, the state, BUILD (-> __setstate__), STOP
    data = b"\x80\x02corchestrator.tracking\nMlflowTracker\n)\x81" + state[2:-1] + b"b."
    copy = pickle.loads(data)
    assert type(copy) is MlflowTracker and copy.parent_id == tracker.parent_id
    assert copy.writer is not tracker.writer and copy.writer.is_alive() and not copy.errors
    trial = TrialView("t0", {"depth": 1})
    _feed(copy, trial, 2, done=True)
    copy.on_trial_complete(0, [], trial)
    assert copy.rows()[0]["metrics"]["val_acc"] == pytest.approx(0.2)
    copy.close()
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    run = client.get_run(copy.runs["t0"])
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_id
    assert client.get_run(tracker.parent_id).info.status == "FINISHED"
    tracker.close()


# ---------------------------------------------------------------- what the MLflow UI shows
TAGS = {"lab": "lab1", "study": "residual-mlp", "profile": "quick", "git_commit": "abc123", "ray": "local"}


def _epochs(trial, tracker, accs, layers=4):
    """A residual-mlp trial as the trainable reports it: per epoch `lr` and `grad_norm/NN`, bookkeeping,
    test metrics and the weights digest on the last epoch."""
    tracker.on_trial_start(0, [], trial)
    for e, acc in enumerate(accs, 1):
        result = {"epoch": e, "train_loss": 1.0 / e, "train_acc": acc, "val_loss": 1 - acc, "val_acc": acc,
                  "lr": 0.01 * (len(accs) - e), "world_size": 1, "node_id": "node-a", "training_iteration": e,
                  **{f"grad_norm/{k:02d}": 2.0 ** -k for k in range(layers)}}
        if e == len(accs):
            result.update({"test_loss": 0.4, "test_acc": acc - 0.05, "weights_digest": 12.5, FINAL_KEY: 1})
        trial.last_result = result
        tracker.on_trial_result(0, [], trial, result)
    tracker.on_trial_complete(0, [], trial)


def _load_table(client, run_id, path, tmp_path):
    """A table logged with MlflowClient.log_table (client.load_table searches the global tracking URI)."""
    import pandas as pd

    assert {"path": path, "type": "table"} in json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    return pd.read_json(client.download_artifacts(run_id, path, str(tmp_path / "tables" / run_id)), orient="split")


def test_the_ui_shows_named_children_results_first_and_a_described_parent(tmp_path, monkeypatch):
    # No Study passed (the session may not yet): the tracker finds it by its lab and study tags.
    tracker = MlflowTracker(mlflow_uri(tmp_path), "lab1", "residual-mlp [quick]", tags=TAGS,
                            params={"profile": "quick", "pinned": "epochs"},
                            resolve=functools.partial(from_dict, Lab1Config), flush_s=0.0)
    titles = {}
    log_figure = tracker.client.log_figure
    monkeypatch.setattr(tracker.client, "log_figure", lambda run_id, fig, path: (
        titles.__setitem__((run_id, path), fig._suptitle.get_text() if fig._suptitle else ""),
        log_figure(run_id, fig, path)))
    trials = {"t0": ({"depth": 16, "residual": False, "lr": 0.00204}, [0.10, 0.12, 0.11]),
              "t1": ({"depth": 16, "residual": True, "lr": 0.00201}, [0.50, 0.90, 0.85]),
              "t2": ({"depth": 16, "residual": True, "lr": 0.00203}, [0.60, 0.90, 0.70])}
    for trial_id, (config, accs) in trials.items():
        _epochs(TrialView(trial_id, config), tracker, accs)
    tracker.close()
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    runs = {t: client.get_run(r) for t, r in tracker.runs.items()}

    # Named by what they tried, unique (t2 rounds like t1: one digit more), the trial id a tag; the
    # study's tags on every child; figures titled with the name.
    assert [runs[t].info.run_name for t in trials] == ["depth=16 plain lr=2.0e-3", "depth=16 residual lr=2.0e-3",
                                                        "depth=16 residual lr=2.03e-3"]
    for t, run in runs.items():
        assert run.data.tags["trial_id"] == t
        assert {k: run.data.tags[k] for k in ("lab", "study", "profile", "git_commit")} == {
            k: TAGS[k] for k in ("lab", "study", "profile", "git_commit")}
        assert titles[(run.info.run_id, "figures/curves.png")] == run.info.run_name
        assert titles[(run.info.run_id, "figures/grad_norms.png")] == run.info.run_name

    # Results first; bookkeeping as tags; the schedule's rate is not `lr`; three gradient summaries.
    m, tags = runs["t1"].data.metrics, runs["t1"].data.tags
    assert (m["best_val_acc"], m["best_val_acc_epoch"], m["final_val_acc"]) == (0.9, 2, 0.85)
    assert m["test_acc"] == pytest.approx(0.8)
    assert m["final_train_loss"] == pytest.approx(1 / 3) and m["val_acc"] == 0.85  # val_acc: the curve's last
    assert not {k for k in m if k.startswith("grad_norm/")} and not {"lr", "world_size", "weights_digest", "epoch"} & set(m)
    assert (m["train_grad_norm_first"], m["train_grad_norm_last"], m["train_grad_norm_ratio"]) == (1.0, 0.125, 8.0)
    assert [x.value for x in client.get_metric_history(runs["t1"].info.run_id, "train_lr_end")] == \
        pytest.approx([0.02, 0.01, 0.0])
    assert (tags["world_size"], tags["weights_digest"], tags["node_id"]) == ("1", "12.5", "node-a")
    assert runs["t1"].data.params["lr"] == "0.00201"  # the param is the initial rate
    grads = _load_table(client, runs["t1"].info.run_id, "tables/grad_norms.json", tmp_path)
    assert list(grads["layer"]) == [0, 1, 2, 3] and list(grads["epoch_3"]) == [1.0, 0.5, 0.25, 0.125]
    assert "Best `val_acc` 0.9000 at epoch 2 (final 0.8500)" in tags["mlflow.note.content"]

    # One best: t1 and t2 tie at 0.9, the lower trial id wins, on the tags, the rank and the note.
    parent = client.get_run(tracker.parent_id)
    assert parent.data.tags["best_run_id"] == runs["t1"].info.run_id
    assert parent.data.tags["best_run_name"] == "depth=16 residual lr=2.0e-3"
    assert [runs[t].data.metrics["study_rank"] for t in ("t1", "t2", "t0")] == [1, 2, 3]
    note = parent.data.tags["mlflow.note.content"].replace("&nbsp;", "")  # cells are padded for the UI
    assert note.startswith("**Do residual connections keep deep MLPs trainable?**")
    assert f"Best of 3 trials: [depth=16 residual lr=2.0e-3](#/experiments/{tracker.experiment_id}/runs/" \
           f"{runs['t1'].info.run_id}?workflowType=machine_learning)" in note
    assert "**Target.** max `val_acc`" in note and "`depth` {1, 2, 4, 8, 16, 32}" in note and "`lr` [0.0003, 0.003] log" in note
    # The comparison (one row per depth x residual, its best trial linked), also logged as a table.
    assert "| 16 | False | 1 | [depth=16 plain lr=2.0e-3](" in note and "| 16 | True | 2 | [depth=16 residual lr=2.0e-3](" in note
    table = _load_table(client, tracker.parent_id, "comparison.json", tmp_path)
    assert list(table["run"]) == ["depth=16 plain lr=2.0e-3", "depth=16 residual lr=2.0e-3"]
    assert list(table["run_id"]) == [runs["t0"].info.run_id, runs["t1"].info.run_id]
    assert list(table["best val_acc"]) == [0.12, 0.9] and list(table["trials"]) == [1, 2]

    # The experiment is one of model training, and holds a saved view of these trials, ranked.
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags[f"mlflow.sharedViewState.{tracker.parent_id}"])
    state = json.loads(view["state"])
    assert view["name"].startswith("residual-mlp [quick] ") and state["orderByKey"] == "metrics.`study_rank`"
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{tracker.parent_id}'"
    assert {"params.`depth`", "params.`lr`", "metrics.`best_val_acc`", "metrics.`test_acc`"} <= set(state["selectedColumns"])
    assert tracker.parent_url() == f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/" \
                                   f"{tracker.parent_id}?workflowType=machine_learning"
    assert tracker.view_url("http://host:5001/").endswith(f"runs?viewStateShareKey={tracker.parent_id}"
                                                          "&workflowType=machine_learning")


def test_repeats_put_mean_and_std_into_the_search_description(tmp_path):
    search = MlflowTracker(mlflow_uri(tmp_path), "lab1", "residual-mlp [quick]", tags=TAGS, params={},
                           resolve=functools.partial(from_dict, Lab1Config), flush_s=0.0)
    _epochs(TrialView("s0", {"depth": 2, "residual": True}), search, [0.5, 0.7])
    search.close()
    repeats = MlflowTracker(mlflow_uri(tmp_path), "lab1", "residual-mlp [repeats x2]",
                            tags={**TAGS, "kind": "repeats", "repeats_of": search.parent_id}, params={},
                            resolve=functools.partial(from_dict, Lab1Config), flush_s=0.0)
    for seed, accs in ((0, [0.6, 0.8]), (1, [0.9, 0.7])):
        _epochs(TrialView(f"r{seed}", {"depth": 2, "residual": True, "seed": seed}), repeats, accs)
    repeats.close()
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    assert {client.get_run(r).info.run_name for r in repeats.runs.values()} == {"depth=2 residual seed=0",
                                                                                "depth=2 residual seed=1"}
    for run_id in (search.parent_id, repeats.parent_id):
        note = client.get_run(run_id).data.tags["mlflow.note.content"].replace("&nbsp;", "")
        assert "**Repeated with several seeds**" in note
        assert "| depth=2 residual | 2 | 0.8500 ± 0.0707 | 0.7000 ± 0.0707 |" in note  # best val_acc, test_acc
        assert "| [0.2147, 1.4853] |" in note  # 0.85 ± t(0.975, 1 dof) 12.706 x 0.0707 / sqrt(2)
        # the finding needs plain and residual at one depth: only residual was repeated
        finding = ("the skip keeps the deepest MLP trainable: residual − plain best_val_acc at depth=max: no samples: "
                   "inconclusive (no cell with both levels ran)")
        assert f"**Findings.**\n\n1. {finding}" in note
        assert client.get_run(run_id).data.tags["finding_1"] == finding
        logged = json.loads(Path(client.download_artifacts(run_id, "repeats.json", str(tmp_path))).read_text())
        assert logged["findings"] == [finding] and logged["cells"][0]["interval"] == pytest.approx([0.2147, 1.4853], abs=1e-4)
    assert client.get_run(search.parent_id).data.tags["mlflow.note.content"].count("Repeated with several seeds") == 1


def test_a_tracker_pickled_before_the_ui_attributes_existed_still_logs(tmp_path, tracker):
    """A tuner.pkl from before these attributes: the class-level defaults stand in for them."""
    state = tracker.__getstate__()
    for name in ("study_text", "parent_name", "started_ms", "repeats_of", "child_tags", "names", "status",
                 "outcome", "booked", "pending_tags"):
        state.pop(name, None)
    copy = MlflowTracker.__new__(MlflowTracker)
    copy.__setstate__(pickle.loads(pickle.dumps(state)))
    trial = TrialView("t0", {"depth": 4, "residual": True})
    _epochs(trial, copy, [0.3, 0.6])
    copy.close()
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    run = client.get_run(copy.runs["t0"])
    assert run.info.run_name == "depth=4 residual" and run.info.status == "FINISHED"
    assert run.data.metrics["best_val_acc"] == 0.6 and "grad_norm/00" not in run.data.metrics
    assert MlflowTracker.names == {} and MlflowTracker.booked == {}  # the class defaults stayed empty
    assert client.get_run(copy.parent_id).data.tags["best_run_id"] == copy.runs["t0"]
    tracker.close()


def test_a_resumed_invocation_keeps_names_ranks_adopted_trials_and_rewrites_its_description(tmp_path):
    """--resume after the driver died: the new tracker reopens the parent, adopts the finished trial
    (its logged best counts), and the interrupted trial's new run is named after the old one."""
    dead = MlflowTracker(mlflow_uri(tmp_path), "lab1", "residual-mlp [quick]", tags=TAGS, params={},
                         resolve=functools.partial(from_dict, Lab1Config), flush_s=0.0)
    _epochs(TrialView("t0", {"depth": 2, "residual": True}), dead, [0.4, 0.9, 0.8])
    running = TrialView("t1", {"depth": 8, "residual": False})
    dead.on_trial_start(0, [], running)
    dead.on_trial_result(0, [], running, {"epoch": 1, "val_acc": 0.3, "lr": 0.01, "grad_norm/00": 1.0})
    dead.drain()
    dead.flush()  # the driver dies here: nothing is closed

    resumed = MlflowTracker(mlflow_uri(tmp_path), "lab1", "", tags={}, params={}, reopen=dead.parent_id,
                            resolve=functools.partial(from_dict, Lab1Config), flush_s=0.0)
    _epochs(TrialView("t1", {"depth": 8, "residual": False}), resumed, [0.3, 0.95])
    resumed.close()
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    new = client.get_run(resumed.runs["t1"])
    assert new.info.run_name == "depth=8 plain (resumed)" and new.data.tags["resumed_from"] == dead.runs["t1"]
    assert new.data.tags["study"] == "residual-mlp" and new.data.metrics["best_val_acc"] == 0.95
    assert client.get_run(dead.runs["t1"]).info.status == "KILLED"
    parent = client.get_run(dead.parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["best_run_id"] == resumed.runs["t1"]
    assert client.get_run(resumed.runs["t0"]).data.metrics["study_rank"] == 2  # adopted: its best 0.9 counts
    note = parent.data.tags["mlflow.note.content"]
    assert "Best of 2 trials: [depth=8 plain (resumed)]" in note and "Do residual connections" in note
    dead.jobs.put(None)  # the dead driver's writer thread, without ending anything
    dead.writer.join()


def test_the_notes_judge_findings_on_the_trackers_own_rows():
    """Rows as MlflowTracker.rows() builds them (typed params, best_<metric>, MLflow statuses): only
    finished ones count."""
    from orchestrator.studies import get_study
    from orchestrator.tracking import notes
    from orchestrator.tracking.callback import _study_text

    text = _study_text(get_study("lab1", "residual-mlp"), {}, {}, "lab1", "val_acc", "max")

    def row(residual: bool, seed: int, best: float, status: str = "FINISHED") -> dict:
        return {"trial_id": f"{residual}{seed}", "status": status, "params": {"depth": 8, "residual": residual,
                "seed": seed}, "metrics": {"best_val_acc": best}}

    rows = [row(True, s, 0.9 + 0.01 * s) for s in (1, 2, 3)] + [row(False, s, 0.2) for s in (1, 2, 3)]
    [line] = notes.verdict_lines(text, rows + [row(False, 4, 0.99, status="KILLED")])
    assert line.startswith("the skip keeps the deepest MLP trainable: residual − plain best_val_acc at depth=8: +0.720 [")
    assert line.endswith("(3 vs 3 seeds): holds")


# ---------------------------------------------------------------- test once (#16)
def test_a_test_phase_adds_its_new_numbers_and_files_to_the_tested_run_only(tmp_path):
    """MlflowTracker.add_tests on a closed study: the tested run gets what the search did not report
    (test metrics, a file of the test trial's checkpoint), its tags and an updated note; another
    run gets nothing; the parent's summary is written again with the test numbers; a second call
    (a --resume reading the same test trials) logs nothing twice."""
    from orchestrator.tracking import Tested

    tracker = _tracker(tmp_path)
    for trial_id in ("t0", "t1"):  # the same val_acc: t0 is the best (ties go to the lower trial id)
        trial = TrialView(trial_id, {"depth": 2})
        _feed(tracker, trial, 2, done=True, test_metric=False)
        trial.last_result = {**trial.last_result, "weights_digest": 1.5}
        tracker.on_trial_complete(0, [], trial)
    tracker.close()
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    tested = tracker.runs["t0"]
    result = {"epoch": 2, "val_acc": 0.2, "test_acc": 0.61, "auroc/msp": 0.8, "weights_digest": 1.5, FINAL_KEY: 1,
              "training_iteration": 2}
    test = Tested(result, _checkpoint(tmp_path / "ckpt"), same_weights=True)
    tracker.add_tests({tested: test})
    tracker.summarise()
    tracker.add_tests({tested: test})

    run = client.get_run(tested)
    assert run.data.metrics["test_acc"] == 0.61 and run.data.metrics["auroc/msp"] == 0.8
    assert run.data.metrics["val_acc"] == pytest.approx(0.2)  # the search's own value stays
    assert [m.step for m in client.get_metric_history(tested, "test_acc")] == [0]  # once
    assert run.data.tags["tested"] == "true" and run.data.tags["test_retrain_same_weights"] == "true"
    assert "test_acc 0.61" in run.data.tags["mlflow.note.content"]
    assert "summary.json" in {a.path for a in client.list_artifacts(tested)}
    other = client.get_run(tracker.runs["t1"])
    assert "tested" not in other.data.tags and not any(k.startswith("test_") for k in other.data.metrics)
    parent = client.get_run(tracker.parent_id)
    assert parent.data.metrics["best_trial_test_acc"] == 0.61
