"""Reports are built from MLflow and agree with it; seeded runs are reproducible."""
from __future__ import annotations

import re

import pytest

from orchestrator.studies import get_study
from tests.conftest import mlflow_uri, run_cli, runs
from trainables.context import LocalContext
from trainables.lab1.classifier import Lab1Config, train


def test_same_seed_same_metrics_on_cpu():
    cfg = Lab1Config(model="cnn", depth=1, width=8, epochs=2, crop_pad=1, seed=3)
    a, b = LocalContext(), LocalContext()
    train(cfg, a)
    train(cfg, b)
    assert a.reports == b.reports
    c = LocalContext()
    train(Lab1Config(model="cnn", depth=1, width=8, epochs=2, crop_pad=1, seed=4), c)
    assert c.reports != a.reports


def _table(md: str, after: str) -> list[list[str]]:
    """The first Markdown table after the line containing `after`."""
    lines = md[md.index(after):].splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_report_tables_match_the_mlflow_runs(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report"
    rc = run_cli(tmp_path, "lab1", "--study", "residual-mlp", "--num-samples", "4", "--set", "epochs=3",
                 "--repeats", "2", "--report-dir", str(out))
    assert rc == 0
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "residual-mlp" in html

    df = runs(tmp_path, "lab1")
    search_parent = df[(df["tags.study"] == "residual-mlp") & (df["tags.kind"].isna())].run_id.iloc[0]
    children = df[df["tags.mlflow.parentRunId"] == search_parent]
    study = get_study("lab1", "residual-mlp")
    table = _table(md, "## lab1/residual-mlp")
    assert len(table) == len(children) if not study.report_by else len(table) >= 1
    # Every row's metrics are those of a real run; the best row is the best run.
    val = [float(r[-2]) for r in table]
    test = [float(r[-1]) for r in table]
    pairs = {(round(v, 4), round(t, 4)) for v, t in zip(children["metrics.val_acc"], children["metrics.test_acc"])}
    assert {(v, t) for v, t in zip(val, test)} <= pairs
    assert max(val) == round(children["metrics.val_acc"].max(), 4)
    # mean ± std over the two seeds of the repeated best config
    repeats = df[df["tags.repeats_of"] == search_parent]
    assert len(repeats) == 1
    rep_children = df[df["tags.mlflow.parentRunId"] == repeats.run_id.iloc[0]]
    assert len(rep_children) == 2 * max(1, len(table) if study.report_by else 1)
    row = _table(md, "Re-run with several seeds")[0]
    config = dict(kv.split("=") for kv in row[0].split(", "))
    group = rep_children[(rep_children["params.depth"] == config["depth"])
                         & (rep_children["params.residual"] == config["residual"])]
    assert len(group) == 2 and int(row[1]) == 2
    assert abs(float(re.match(r"([\d.]+) ±", row[-1]).group(1)) - group["metrics.test_acc"].mean()) < 1e-3
    # The report is also an artifact of the study's parent run.
    import mlflow

    names = {a.path for a in mlflow.MlflowClient(mlflow_uri(tmp_path)).list_artifacts(search_parent, "report")}
    assert {"report/report.md", "report/report.html"} <= names
