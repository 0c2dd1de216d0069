"""Reports are built from MLflow and agree with it; seeded runs are reproducible."""
from __future__ import annotations

import dataclasses
import itertools
import re

import pytest

from orchestrator.report import best_configs, comparison_table, verdict_lines
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


def _record(trial_id: str, run_id: str, depth: int, val_acc: float, test_acc: float, status: str = "FINISHED",
            best: float | None = None) -> dict:
    """A child run as orchestrator.tracking.read_invocation returns it: `val_acc` is the last epoch's,
    `best_val_acc` (when given) the trial's best epoch's, as the tracker logs them."""
    metrics = {"val_acc": val_acc, "test_acc": test_acc, **({"best_val_acc": best} if best is not None else {})}
    return {"run_id": run_id, "name": f"depth={depth} #{trial_id}", "status": status, "tags": {"trial_id": trial_id},
            "params": {}, "sampled": {"depth": depth, "residual": True}, "metrics": metrics, "start_time": 0}


RECORDS = [_record("t2", "aaa", 2, 0.8, 0.61), _record("t0", "ccc", 2, 0.8, 0.62),
           _record("t1", "bbb", 4, 0.7, 0.5), _record("t3", "ddd", 2, float("nan"), 0.9),
           _record("t4", "eee", 4, 0.99, 0.99, status="KILLED"), _record("t5", "fff", 8, 0.3, 0.2, best=0.85)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(RECORDS))))[::97])
def test_report_order_and_best_of_group_come_from_the_ranking(order):
    """Finished runs only, NaN skipped, best first by each trial's best epoch (`best_val_acc`, else the
    logged `val_acc`); a tie goes to the lower trial id (as the tracker's best_run_id does), whatever
    order MLflow returned the runs in. Runs are named as the UI names them, with their full ids."""
    runs = [RECORDS[i] for i in order]
    study = get_study("lab1", "residual-mlp")
    assert study.report_by == ("depth", "residual") and study.metric == "val_acc"
    headers, rows = comparison_table(study, runs)
    assert headers == ["depth", "residual", "trials", "best run", "best val_acc", "test_acc"]
    assert rows == [["2", "True", "2", "depth=2 #t0", "0.8000", "0.6200"],
                    ["4", "True", "1", "depth=4 #t1", "0.7000", "0.5000"],
                    ["8", "True", "1", "depth=8 #t5", "0.8500", "0.2000"]]
    headers, top = best_configs(study, runs)
    assert headers == ["rank", "run", "config", "best val_acc", "test_acc", "run id"]
    assert [(r[1], r[-1]) for r in top] == [("depth=8 #t5", "`fff`"), ("depth=2 #t0", "`ccc`"), ("depth=2 #t2", "`aaa`")]
    flat = dataclasses.replace(study, cells=(), report_by=(), findings=(), cell_references=(), mode="min")
    _, rows = comparison_table(flat, runs)
    assert [r[-2] for r in rows] == ["0.7000", "0.8000", "0.8000", "0.8500"] and rows[1][-1] == "0.6200"


def _rep(depth: int, residual: bool, seed: int, best: float) -> dict:
    return {"run_id": f"r{depth}{residual}{seed}", "status": "FINISHED", "tags": {}, "params": {},
            "sampled": {"depth": depth, "residual": residual, "seed": seed}, "metrics": {"best_val_acc": best}}


def test_findings_are_judged_on_the_repeats_and_inconclusive_without_them():
    study = get_study("lab1", "residual-mlp")
    plain = [_record("p1", "p1", 32, 0.1, 0.1, best=0.11)]
    plain[0]["sampled"] = {"depth": 32, "residual": False}
    search = [*RECORDS, *plain]  # residual at depth 2, 4, 8; plain only at 32: no depth has both
    assert verdict_lines(study, search, None) == [
        "the skip keeps the deepest MLP trainable: residual − plain best_val_acc at depth=max: no samples: "
        "inconclusive (no cell with both levels ran)"]
    repeats = [_rep(32, True, s, 0.9 + 0.01 * s) for s in (1, 2, 3)] + [_rep(32, False, s, 0.1) for s in (1, 2, 3)]
    repeats += [_rep(2, False, 1, 0.99)]  # a shallower cell does not count
    [line] = verdict_lines(study, search, repeats)
    assert line.startswith("the skip keeps the deepest MLP trainable: residual − plain best_val_acc at depth=32: "
                           "+0.820 [") and line.endswith("(3 vs 3 seeds): holds")
    flipped = [dict(r, metrics={"best_val_acc": 1.0 - r["metrics"]["best_val_acc"]}) for r in repeats]
    assert verdict_lines(study, search, flipped)[0].endswith(": does not hold")


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
    parents = df[df["tags.mlflow.parentRunId"].isna()]  # children carry the study's tags too
    search_parent = parents[(parents["tags.study"] == "residual-mlp") & (parents["tags.kind"].isna())].run_id.iloc[0]
    children = df[df["tags.mlflow.parentRunId"] == search_parent]
    study = get_study("lab1", "residual-mlp")
    table = _table(md, "## lab1/residual-mlp")
    assert len(table) == len(children) if not study.report_by else len(table) >= 1
    # Every row's metrics are those of a real run; the best row is the best run.
    val = [float(r[-2]) for r in table]
    test = [float(r[-1]) for r in table]
    # The target column is each trial's best epoch, as on the parent run and in MLflow's best_val_acc.
    pairs = {(round(v, 4), round(t, 4)) for v, t in zip(children["metrics.best_val_acc"], children["metrics.test_acc"])}
    assert {(v, t) for v, t in zip(val, test)} <= pairs
    assert max(val) == round(children["metrics.best_val_acc"].max(), 4)
    parent = df[df.run_id == search_parent].iloc[0]
    assert round(parent["metrics.best_val_acc"], 4) == max(val)
    best_row = _table(md, "Best configurations")[0]
    assert best_row[1] == parent["tags.best_run_name"] and best_row[-1] == f"`{parent['tags.best_run_id']}`"
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
    assert abs(float(re.match(r"([\d.]+) ±", row[-2]).group(1)) - group["metrics.best_val_acc"].mean()) < 1e-3
    # the repeats use new seeds (the search's was 0), and the finding is judged on them
    assert set(rep_children["params.seed"]) == {"1", "2"}
    assert re.search(r"Findings: \(1\) the skip keeps the deepest MLP trainable: residual − plain best_val_acc at "
                     r"depth=2: [+-][\d.]+ \[[+-][\d.]+, [+-][\d.]+\] \(2 vs 2 seeds\): "
                     r"(holds|does not hold|inconclusive)( \([^)]*\))?\.", md), md
    # The search's parent run says the same in its description (with --repeats: mean ± std).
    note = parent["tags.mlflow.note.content"]
    assert "Repeated with several seeds" in note and f"{group['metrics.best_val_acc'].mean():.4f} ±" in note
    # The report is also an artifact of the study's parent run.
    import mlflow

    names = {a.path for a in mlflow.MlflowClient(mlflow_uri(tmp_path)).list_artifacts(search_parent, "report")}
    assert {"report/report.md", "report/report.html"} <= names


def test_the_full_profile_table_has_the_labs_number_beside_each_cell_that_has_one():
    study = get_study("lab1", "residual-mlp")
    deep = _record("t9", "zzz", 32, 0.95, 0.94)
    headers, rows = comparison_table(study, [*RECORDS, deep], "full")
    assert headers[-1] == "lab's reference"
    assert [(r[0], r[-1]) for r in rows] == [("2", "-"), ("4", "-"), ("8", "-"), ("32", "~94-98%")]
    quick_headers, _ = comparison_table(study, [*RECORDS, deep], "quick")
    assert "lab's reference" not in quick_headers  # the lab's numbers are for the full profile's data
