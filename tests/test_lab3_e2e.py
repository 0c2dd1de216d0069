"""Every Lab 3 study as a real Tune study through the CLI (2 trials each, quick profile), read back from
MLflow: parent + children, the searched params, the metrics. One data folder for the module, so the
tiny models' pretraining is computed once."""
from __future__ import annotations

import pytest

from orchestrator.studies import get_study
from tests.conftest import assert_tested_once, mlflow_uri, run_cli, runs

pytestmark = pytest.mark.slow

# study -> (--set overrides that shrink it, searched params, metrics every finished trial logs; test_*:
# only the tested ones)
CASES = {
    "sentiment-baseline": ([], ["classifier", "C"], ["val_acc", "val_f1", "test_acc", "test_f1", "encoder_changed"]),
    "sentiment-finetune": (["epochs=2"], ["lr", "batch_size", "weight_decay"],
                           ["val_acc", "val_f1", "test_acc", "trainable_params", "encoder_changed"]),
    "sentiment-lora": (["epochs=2"], ["lora_rank", "lora_alpha", "lora_targets", "lr"],
                       ["val_acc", "test_acc", "trainable_params", "total_params", "trainable_fraction"]),
    "clip-zeroshot": ([], ["prompt"], ["val_acc", "test_acc", "test_acc/red_square", "num_templates"]),
    "clip-lora": (["epochs=3"], ["lora_towers", "lora_rank", "lr"],
                  ["val_acc", "test_acc", "test_acc_before", "test_acc_linear", "test_acc_linear_before",
                   "trainable_params", "trainable_fraction"]),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lab3-data")


@pytest.mark.parametrize("study", list(CASES))
def test_study_runs_and_logs_params_and_metrics(study, ray_local, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets, searched, metrics = CASES[study]
    rc = run_cli(tmp_path, "lab3", "--study", study, "--num-samples", "2", "--max-concurrent", "2",
                 "--data-dir", str(data_dir), *(["--set", *sets] if sets else []))
    assert rc == 0
    df = runs(tmp_path, "lab3")
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 2
    assert set(df.status) == {"FINISHED"}
    assert (children["tags.status"] == "finished").all()
    for name in searched:
        assert children[f"params.{name}"].notna().all(), name
    # Test once: validation on every trial, the test split only on each cell's selected trial
    record = get_study("lab3", study)
    assert_tested_once(children, record.factors, f"best_{record.metric}")
    tested = children[children["tags.tested"] == "true"]
    for name in metrics:
        assert (tested if name.startswith("test_") else children)[f"metrics.{name}"].notna().all(), name
    assert not children.loc[children["tags.tested"] != "true", "metrics.test_acc"].notna().any()
    if study == "sentiment-lora":
        frac = children["metrics.trainable_fraction"]
        assert ((0 < frac) & (frac < 1)).all()
        assert (children["metrics.encoder_changed"] == 0).all()

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in children.run_id:
        assert "config.json" in {a.path for a in client.list_artifacts(run_id)}


def test_fine_tune_under_ray_train_ddp(ray_local, data_dir, tmp_path, monkeypatch):
    """--workers-per-trial 2: the HF Trainer runs DDP inside TorchTrainer's process group; both
    workers report and their weights agree at the end."""
    monkeypatch.chdir(tmp_path)
    rc = run_cli(tmp_path, "lab3", "--study", "sentiment-finetune", "--num-samples", "1", "--workers-per-trial", "2", "--cpus-per-trial", "0.5",
                 "--data-dir", str(data_dir), "--set", "epochs=2", "max_train=512")
    assert rc == 0
    child = runs(tmp_path, "lab3").dropna(subset=["tags.mlflow.parentRunId"]).iloc[0]
    assert child["tags.world_size"] == "2" and child["tags.workers_reported"] == "2"
    assert child["tags.replicas_in_sync"] == "1"
    assert 0 <= child["metrics.test_acc"] <= 1
