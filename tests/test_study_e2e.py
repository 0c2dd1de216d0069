"""A real Tune study through the CLI: OptunaSearch trials, MLflow parent + children read back."""
from __future__ import annotations

import pytest

from tests.conftest import LOCAL_RAY, mlflow_uri, run_cli, runs

pytestmark = pytest.mark.slow


def test_residual_mlp_study_logs_parent_children_metrics_and_figures(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 4 trials at 0.5 CPU each on the fixture's 4 CPUs: all run at once, all log through the driver.
    rc = run_cli(tmp_path, "lab1", "--study", "residual-mlp", "--num-samples", "4", "--max-concurrent", "4",
                 "--cpus-per-trial", "0.5", "--set", "epochs=12")
    assert rc == 0
    df = runs(tmp_path, "lab1")
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents.run_id.iloc[0]
    assert (children["tags.mlflow.parentRunId"] == parent_id).all()
    assert set(df.status) == {"FINISHED"}
    assert parents["tags.study"].iloc[0] == "residual-mlp" and parents["tags.profile"].iloc[0] == "quick"
    for col in ("params.depth", "params.residual", "params.lr", "params.dataset", "params.epochs"):
        assert children[col].notna().all(), col
    assert (children["params.epochs"] == "12").all()
    # They really ran concurrently: some instant lies inside all four runs.
    assert children.start_time.max() < children.end_time.min()

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in children.run_id:
        history = client.get_metric_history(run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, 13))
        assert client.get_metric_history(run_id, "test_acc")
        assert sorted(m.step for m in client.get_metric_history(run_id, "train_grad_norm_ratio")) == list(range(1, 13))
        assert not client.get_metric_history(run_id, "grad_norm/00")  # per-layer norms: a figure and a table
        assert [a.path for a in client.list_artifacts(run_id, "tables")] == ["tables/grad_norms.json"]
        figures = {a.path for a in client.list_artifacts(run_id, "figures")}
        assert figures == {"figures/curves.png", "figures/grad_norms.png"}
        assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/model.pt"]
    assert {a.path for a in client.list_artifacts(parent_id, "figures")} == {"figures/comparison.png"}


def test_storage_can_be_a_uri(ray_local, tmp_path, monkeypatch):
    """--storage takes a URI (what a cluster's shared S3/GCS storage looks like); file:// here. Extra
    Tune callbacks given to main() (how benchmarks time a study) see every trial."""
    from ray import tune

    from orchestrator.cli import main

    class Count(tune.Callback):
        def __init__(self) -> None:
            self.started: list[str] = []

        def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
            self.started.append(trial.trial_id)

    monkeypatch.chdir(tmp_path)
    uri = f"file://{tmp_path / 'shared'}"
    count = Count()
    rc = main(["lab1", "--study", "mlp-capacity", "--num-samples", "2", "--set", "epochs=2", "--quiet",
               "--storage", uri, "--mlflow-uri", mlflow_uri(tmp_path), *LOCAL_RAY], callbacks=[count])
    # 2 searched trials in 2 cells, then each cell's selected configuration tested (a third experiment)
    assert rc == 0 and len(set(count.started)) == 4
    experiments = sorted((tmp_path / "shared").glob("lab1-mlp-capacity-*"))
    assert [e.name.endswith("-test") for e in experiments] == [False, True]
    assert all((e / "dla_study.pkl").exists() for e in experiments)
    assert list(experiments[0].glob("run_trial_*/checkpoint_*"))
    df = runs(tmp_path, "lab1")
    assert len(df) == 3 and set(df.status) == {"FINISHED"}
    assert df["tags.tune_experiment"].dropna().iloc[0].startswith("file://")


def test_only_the_selected_configuration_of_each_cell_is_tested(ray_local, tmp_path, monkeypatch, capsys):
    """Test once (#16): the search never evaluates the test split; each cell's best trial is trained
    again with the search's seed, its test numbers land on that trial's run, and the re-trained
    weights are the searched ones (CPU). Width pinned to 10: one cell, three trials, one tested."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    rc = run_cli(tmp_path, "lab1", "--study", "mlp-capacity", "--num-samples", "3", "--set", "epochs=2",
                 "--set", "width=10")
    assert rc == 0
    assert "lab1/mlp-capacity test: 1 of 1 selected configurations tested" in capsys.readouterr().out
    df = runs(tmp_path, "lab1")
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 3 and set(df.status) == {"FINISHED"}
    tested = children[children["metrics.test_acc"].notna()]
    assert len(tested) == 1
    best = children.sort_values(["metrics.best_val_acc", "tags.trial_id"], ascending=[False, True]).iloc[0]
    assert tested.run_id.iloc[0] == best.run_id  # the selected one: best val_acc, ties to the lower trial id
    assert tested["tags.tested"].iloc[0] == "true" and tested["tags.test_retrain_same_weights"].iloc[0] == "true"
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in children.run_id:  # no other trial has any test number, at any step
        if run_id != best.run_id:
            assert not any(k.startswith("test_") for k in client.get_run(run_id).data.metrics)
    parent = df[df["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert parent["metrics.best_trial_test_acc"] == tested["metrics.test_acc"].iloc[0]
    assert parent["tags.best_run_id"] == best.run_id
