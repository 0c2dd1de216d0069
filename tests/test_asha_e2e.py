"""ASHA stops a real trial of a real study, end to end through `run.py` (issue #18).

lab1 `resnet` (quick profile, `early_stopping=True`, `grace_period=2`, cells optimizer sgd/adam: ASHA
within each cell, orchestrator.tuning.CellASHA) runs 4 trials of 4 epochs (epochs > grace period,
2 trials per cell). The sgd cell's second trial is stopped at epoch 2, as the user sees it:

- MLflow: its run has 2 epochs of history (the others 4), tags `status=stopped_early` and
  `stopped_early=true`, no test metrics and no model; the run's MLflow status is FINISHED (MLflow has
  no "stopped" status), so are the parent's and every other run's;
- the report counts it ("3 finished, 1 stopped early"); the console has no failure line;
- the study exits 0: an ASHA stop is not a failure.

The cut is ASHA's own rule (a trial is stopped at a rung when its val_acc is below the cell's cutoff
there), checked on the logged numbers, and it is made within the cell: the adam cell's first trial
is below the sgd cell's bar at epoch 2 and still runs to its end.

Why it is deterministic: `--max-concurrent 1` runs the trials one at a time (asserted: no two runs
overlap), so every rung sees the results in the same order (the cells in turn: sgd, adam, sgd,
adam; the first trial of a cell meets an empty rung and is never cut). Each trial is seeded (`--seed
0` seeds the search and every trial) and trains on one thread in its Ray worker; the TPE sampler is
seeded too. The margins at the rung are wide: 0.35 against a bar of 0.64 for the stopped trial,
0.75 against 0.08 for the adam trial that goes on (about 77 and 180 of the 270 validation images),
so no floating-point difference between machines can flip a decision. `model=cnn` (the quick
profile's small CNN in place of ResNet-18) keeps it at ~50 s on a 2-core CPU machine (~75 s under
load, Ray's start included): ResNet-18 costs ~5 s an epoch there and learns too little in 2 epochs
on a cut-down training set to give such margins.
"""
from __future__ import annotations

import pytest

from orchestrator.studies import get_study
from tests.conftest import assert_tested_once, child_runs, mlflow_uri, run_cli, runs

pytestmark = pytest.mark.slow

EPOCHS, GRACE = 4, 2
CELLS = ["sgd", "adam", "sgd", "adam"]  # the order the trials start in: the cells in turn
STOPPED = 2                             # the sgd cell's second trial


def test_asha_stops_a_trial_of_the_resnet_study_and_the_study_still_exits_0(ray_local, tmp_path, monkeypatch,
                                                                            capsys):
    study = get_study("lab1", "resnet")
    assert study.early_stopping and study.grace_period == GRACE < EPOCHS and study.factors == ("optimizer",)
    monkeypatch.chdir(tmp_path)
    rc = run_cli(tmp_path, "lab1", "--study", "resnet", "--num-samples", "4", "--max-concurrent", "1",
                 "--seed", "0", "--set", f"epochs={EPOCHS}", "model=cnn", "--report-dir", str(tmp_path / "report"))
    out = capsys.readouterr().out
    assert rc == 0, out[-4000:]
    assert "trials failed" not in out and "did not finish every trial" not in out, out[-4000:]
    assert "== lab1/resnet: best val_acc=" in out and "over 4 trials" in out, out[-4000:]

    df = runs(tmp_path, "lab1")
    assert len(df[df["tags.mlflow.parentRunId"].isna()]) == 1
    assert set(df.status) == {"FINISHED"}  # the parent, the finished trials and the stopped one
    children = child_runs(tmp_path, "lab1").sort_values("start_time").reset_index(drop=True)
    assert len(children) == 4
    # One at a time (what makes ASHA's decisions deterministic): each run ends before the next starts.
    assert (children.end_time.iloc[:-1].to_numpy() <= children.start_time.iloc[1:].to_numpy()).all()
    assert list(children["params.optimizer"]) == CELLS
    assert (children["params.epochs"] == str(EPOCHS)).all() and (children["params.model"] == "cnn").all()

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    val_acc = [{m.step: m.value for m in client.get_metric_history(run_id, "val_acc")} for run_id in children.run_id]
    table = "\n".join(f"{CELLS[i]}: {sorted(h.items())} {children['tags.status'][i]}" for i, h in enumerate(val_acc))
    expected = [list(range(1, (GRACE if i == STOPPED else EPOCHS) + 1)) for i in range(len(CELLS))]
    assert [sorted(h) for h in val_acc] == expected, table  # the stopped trial: 2 epochs of 4
    for i, row in children.iterrows():
        artifacts = {a.path for a in client.list_artifacts(row.run_id, "checkpoint")}
        if i == STOPPED:
            assert row["tags.status"] == "stopped_early" and row["tags.stopped_early"] == "true", table
            assert row["metrics.best_val_acc_epoch"] <= GRACE
            assert "checkpoint/model.pt" not in artifacts
            assert "**stopped early**" in row["tags.mlflow.note.content"]
        else:
            assert row["tags.status"] == "finished" and row["tags.stopped_early"] == "false", table
            assert "checkpoint/model.pt" in artifacts
    assert_tested_once(children, ["optimizer"])  # each cell's best, trained again after the search

    # ASHA's rule on the logged numbers, with wide margins: the stopped trial was below its cell's first
    # trial at the rung; the adam cell's second trial was above its own first trial and went on.
    rung = [h[GRACE] for h in val_acc]
    assert rung[STOPPED] < rung[0] - 0.15, table
    assert rung[3] > rung[1] + 0.15, table
    # Within the cell: the adam cell's first trial lies far below the sgd bar at the rung and still ran to
    # its end (one ASHA over all trials would have compared it with the sgd trial).
    assert rung[1] < rung[0] - 0.15, table

    report = (tmp_path / "report" / "report.md").read_text()
    assert "4 trials — 3 finished, 1 stopped early" in report, report[:2000]
