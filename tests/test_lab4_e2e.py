"""Each Lab 4 study end to end through the CLI: a Tune study of 2 Optuna trials on the quick
profile (few epochs), read back from MLflow: searched params, metrics, figures, parent figure."""
from __future__ import annotations

import mlflow
import pytest

from tests.conftest import mlflow_uri, run_cli, runs

pytestmark = pytest.mark.slow

CASES = {
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
    for name in metrics:
        assert children[f"metrics.{name}"].notna().all(), name
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in children.run_id:
        assert set(files) | {"config.json", "figures/curves.png", "checkpoint/model.pt"} <= _artifacts(client, run_id)
        assert sorted(m.step for m in client.get_metric_history(run_id, "val_acc")) == [1, 2]
    assert "figures/comparison.png" in _artifacts(client, parents.run_id.iloc[0])
