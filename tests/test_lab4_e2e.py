"""Each Lab 4 study end to end through the CLI: a Tune study of 2 Optuna trials on the quick
profile (few epochs), read back from MLflow: searched params, metrics, figures, parent figure."""
from __future__ import annotations

import mlflow
import pytest

from orchestrator.studies import get_study
from tests.conftest import assert_tested_once, mlflow_uri, run_cli, runs

pytestmark = pytest.mark.slow

CASES = {
    "classifier": (["optimizer", "lr"], ["val_acc", "test_acc", "ae_val_loss"], []),
    "ood": (["temperature", "odin_eps"], ["val_auroc", "auroc/ae", "auroc/odin", "aupr_in/msp", "aupr_out/energy",
                                          "fpr95/maxlogit"],
            ["figures/ood_histograms.png", "figures/ood_roc_pr.png", "ood_curves.json"]),
    "fgsm": (["epsilon", "model"], ["acc_eps/0.0000", "acc_eps/0.2000", "success_rate", "iter_success_rate",
                                    "mean_linf"],
             ["figures/acc_vs_eps.png", "figures/fgsm_examples.png", "figures/iterative_examples.png"]),
    "adv-train": (["epsilon", "mix"], ["val_robust_acc", "fgsm_acc", "pgd_acc", "pgd_acc_eps/0.1000", "auroc/msp",
                                       "catastrophic_overfit", "val_pgd_acc"],
                  ["figures/robust_acc_vs_eps.png", "figures/ood_roc_pr.png", "robustness.json"]),
    "targeted": (["target", "epsilon"], ["success_rate", "success_eps/0.1000", "mean_linf"],
                 ["figures/targeted_budget.png", "figures/targeted_examples.png", "targeted.json"]),
}


def _artifacts(client: mlflow.MlflowClient, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return found


@pytest.mark.parametrize("study", list(CASES))
def test_study_runs_as_a_tune_study_logged_to_mlflow(ray_local, tmp_path, monkeypatch, study):
    monkeypatch.chdir(tmp_path)
    params, metrics, files = CASES[study]
    rc = run_cli(tmp_path, "lab4", "--study", study, "--num-samples", "2", "--max-concurrent", "2",
                 "--set", "epochs=2")
    assert rc == 0
    df = runs(tmp_path, "lab4")
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 2
    assert set(df.status) == {"FINISHED"} and set(children["tags.status"]) == {"finished"}
    for name in params:
        assert children[f"params.{name}"].notna().all(), name
    assert any(children[f"params.{name}"].nunique() == 2 for name in params)  # the search did vary them
    # Test once: the search evaluated validation only; each cell's selected trial (classifier: one
    # cell; the others: 2 trials cover 2 cells) was trained again and its test-split results, metrics
    # and files, went onto its run.
    record = get_study("lab4", study)
    assert_tested_once(children, record.factors, f"best_{record.metric}")
    tested = children[children["tags.tested"] == "true"]
    assert len(tested) == (1 if study == "classifier" else 2)
    for name in metrics:
        assert (children if name.startswith("val_") else tested)[f"metrics.{name}"].notna().all(), name
    untested = children[children["tags.tested"] != "true"]
    assert not untested.filter(like="metrics.test_").notna().any().any()  # the search never tested
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    post_hoc = study in ("ood", "fgsm", "targeted")
    for run_id in children.run_id:
        # (a one-step history has no curves to draw)
        test_files = set(files) if run_id in set(tested.run_id) else set()
        assert test_files | {"config.json"} | ({"figures/curves.png"} if not post_hoc else set()) \
            <= _artifacts(client, run_id)
        # a post-hoc trial probes the trained model once: its training's last epoch is its one step
        steps = sorted(m.step for m in client.get_metric_history(run_id, "val_acc"))
        assert steps == ([2] if post_hoc else [1, 2])
    if post_hoc:  # trained once: the trial that trained it keeps the model, every trial names it
        assert children["tags.probed_model"].notna().all()
        with_model = [r for r in children.run_id if "checkpoint/model.pt" in _artifacts(client, r)]
        # one model per architecture: fgsm's cells are the MLP and the CNN
        assert len(with_model) == (children["params.model"].nunique() if study == "fgsm" else 1)
    else:
        assert all("checkpoint/model.pt" in _artifacts(client, r) for r in children.run_id)
    if study != "classifier":
        assert "figures/comparison.png" in _artifacts(client, parents.run_id.iloc[0])


def test_the_post_hoc_studies_probe_the_classifier_studys_best_model(ray_local, tmp_path, monkeypatch, capsys):
    """A `classifier` study first, then `ood` with the same data, architecture and seed: ood's trials
    probe the classifier study's best trial (found in MLflow), training nothing themselves."""
    monkeypatch.chdir(tmp_path)
    assert run_cli(tmp_path, "lab4", "--study", "classifier", "--num-samples", "2", "--set", "epochs=2") == 0
    df = runs(tmp_path, "lab4")
    best = df[df["tags.mlflow.parentRunId"].isna()]["tags.best_run_id"].iloc[0]
    capsys.readouterr()
    assert run_cli(tmp_path, "lab4", "--study", "ood", "--num-samples", "2", "--set", "epochs=2") == 0
    assert f"source model: MLflow run {best}" in capsys.readouterr().out
    df = runs(tmp_path, "lab4")
    ood = df[(df["tags.study"] == "ood") & df["tags.mlflow.parentRunId"].notna()]
    assert len(ood) == 2 and set(ood["tags.probed_model"]) == {best} and set(ood["params.source_run"]) == {best}
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    assert not any("checkpoint/model.pt" in _artifacts(client, r) for r in ood.run_id)
