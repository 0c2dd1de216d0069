"""Transfer and CAM through the CLI: a bad source run is a one-line exit 2 that creates no run;
end to end, the studies log their variants, figures and comparisons, and transfer finds its source
CNN in MLflow."""
from __future__ import annotations

import pytest

from tests.conftest import mlflow_uri, run_cli, runs


def _corrupt_run(tmp_path) -> str:
    """A finished run in experiment lab1 whose checkpoint/model.pt is garbage."""
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    exp = client.create_experiment("lab1")
    run = client.create_run(exp, tags={"study": "residual-cnn"})
    bad = tmp_path / "upload" / "model.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04 truncated zip, not a torch checkpoint")
    client.log_artifact(run.info.run_id, str(bad), "checkpoint")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.mark.parametrize("study", ["transfer", "cam"])
def test_a_missing_or_corrupt_source_run_is_one_line_exit_2_and_no_new_run(ray_local, tmp_path, monkeypatch,
                                                                           capsys, study):
    monkeypatch.chdir(tmp_path)
    corrupt = _corrupt_run(tmp_path)
    capsys.readouterr()
    for run_id, expected in [("0123456789abcdef", "no MLflow run"), (corrupt, "checkpoint is unreadable")]:
        rc = run_cli(tmp_path, "lab1", "--study", study, "--set", f"source_run={run_id}")
        err = capsys.readouterr().err.strip()
        assert rc == 2
        assert len(err.splitlines()) == 1 and f"lab1/{study}" in err and expected in err, err
        assert len(runs(tmp_path, "lab1")) == 1  # only the corrupt run made above
        assert not (tmp_path / "ray_results").exists()  # nothing downloaded is left behind


@pytest.mark.slow
def test_transfer_study_logs_each_variant_as_a_child_run(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(tmp_path, "lab1", "--study", "transfer", "--num-samples", "2", "--set", "epochs=2") == 0
    df = runs(tmp_path, "lab1")
    parent = df[df["tags.mlflow.parentRunId"].isna()]
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1 and len(children) == 2 and set(df.status) == {"FINISHED"}
    assert children["params.variant"].nunique() == 2
    assert children["metrics.test_acc"].notna().all() and children["metrics.val_acc"].notna().all()
    assert (children["params.source_run"] == "").all() and children["params.source_cache"].str.len().gt(0).all()

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    assert {a.path for a in client.list_artifacts(parent.run_id.iloc[0], "figures")} == {"figures/comparison.png"}
    for _, child in children.iterrows():
        files = {a.path for a in client.list_artifacts(child.run_id)}
        assert {"config.json", "source.json"} <= files


@pytest.mark.slow
def test_transfer_uses_the_best_source_cnn_found_in_mlflow(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(tmp_path, "lab1", "--study", "residual-cnn", "--num-samples", "1",
                   "--set", "classes=0,1,2,3,4", "epochs=2", "depth=1") == 0
    source_parent = runs(tmp_path, "lab1")
    best = source_parent["tags.best_run_id"].dropna().iloc[0]
    assert run_cli(tmp_path, "lab1", "--study", "transfer", "--num-samples", "1", "--set", "variant=head",
                   "epochs=1") == 0
    df = runs(tmp_path, "lab1")
    child = df[(df["tags.mlflow.parentRunId"].notna()) & (df["params.variant"] == "head")]
    assert len(child) == 1 and child["params.source_run"].iloc[0] == best
    assert child["params.source_checkpoint"].iloc[0].endswith("model.pt")
    assert child["params.source_cache"].iloc[0] == ""  # nothing trained in the trials


@pytest.mark.slow
def test_cam_study_logs_class_grids_and_mistakes(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(tmp_path, "lab1", "--study", "cam", "--num-samples", "2") == 0
    df = runs(tmp_path, "lab1")
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 2 and set(df.status) == {"FINISHED"}
    assert children["params.method"].nunique() == 2

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in children.run_id:
        figures = {a.path for a in client.list_artifacts(run_id, "figures/cam")}
        assert {f"figures/cam/class_{c:02d}_{c}.png" for c in range(10)} <= figures
        assert "figures/cam/mistakes.png" in figures
    parent = df[df["tags.mlflow.parentRunId"].isna()].run_id.iloc[0]
    assert "figures/comparison.png" in {a.path for a in client.list_artifacts(parent, "figures")}
