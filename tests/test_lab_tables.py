"""Tables across a lab's studies: Lab 3's frozen / fine-tune / LoRA side by side (each study's
selected trial), Lab 4's scores x OOD sets (the newest invocation of each set)."""
from __future__ import annotations

from orchestrator import lab_tables
from orchestrator.studies import get_study, tables_of


def _run(name: str, tid: str, metrics: dict, params: dict | None = None, status: str = "FINISHED") -> dict:
    return {"run_id": name, "name": name, "status": status, "tags": {"trial_id": tid}, "params": params or {},
            "sampled": {}, "metrics": metrics}


def test_lab3_puts_each_sentiment_studys_selected_trial_side_by_side():
    [table] = tables_of("lab3")
    studies = [get_study("lab3", n) for n in table.studies]
    frozen = {"children": [_run("svm", "t0", {"best_val_acc": 0.80, "test_acc": 0.79, "trainable_params": 0.0}),
                           _run("logreg", "t1", {"best_val_acc": 0.82, "test_acc": 0.78, "trainable_params": 0.0})]}
    lora = {"children": [_run("r4", "t0", {"best_val_acc": 0.9, "test_acc": 0.88, "trainable_params": 1500.0},
                              status="FAILED")]}
    headers, rows = lab_tables.winners(table, [(studies[0], frozen), (studies[1], None), (studies[2], lora)])
    assert headers[:4] == ["study", "selected run", "best val_acc", "test_acc"]
    assert rows[0][:5] == ["sentiment-baseline", "logreg", "0.8200", "0.7800", "-"]
    assert rows[1][:2] == ["sentiment-finetune", "not run"] and rows[2][:2] == ["sentiment-lora", "no finished trial"]


def test_lab4_has_one_row_per_ood_set_and_score_from_the_newest_invocation_of_each_set():
    [table] = tables_of("lab4")
    study = get_study("lab4", "ood")
    newest = {"children": [_run("n", "t0", {"best_val_auroc": 0.9, "auroc/msp": 0.91, "fpr95/msp": 0.3,
                                            "auroc/energy": 0.95}, {"ood_set": "noise"})]}
    older = {"children": [_run("o", "t0", {"best_val_auroc": 0.99, "auroc/msp": 0.5}, {"ood_set": "noise"})]}
    other = {"children": [_run("f", "t0", {"best_val_auroc": 0.7, "auroc/msp": 0.7}, {"ood_set": "fakedata"})]}
    headers, rows = lab_tables.scores(table, study, [newest, older, other])
    assert headers == ["ood_set", "score", "auroc", "aupr_in", "aupr_out", "fpr95", "selected run"]
    assert rows == [["fakedata", "msp", "0.7000", "-", "-", "-", "f"],
                    ["noise", "msp", "0.9100", "-", "-", "0.3000", "n"],
                    ["noise", "energy", "0.9500", "-", "-", "-", "n"]]


def test_lab4_selects_each_ood_set_among_its_own_trials_of_one_study():
    """The ood study's cells are its OOD sets: one invocation fills every set's rows, each with the
    trial selected among that set's trials (noise's easy AUROC never selects a fakedata trial); a
    newer run of one set (`--set ood_set=noise`) replaces that set's rows only."""
    [table] = tables_of("lab4")
    study = get_study("lab4", "ood")
    cells = {"children": [
        _run("noise-a", "t0", {"best_val_auroc": 0.99, "auroc/msp": 0.98}, {"ood_set": "noise"}),
        _run("noise-b", "t1", {"best_val_auroc": 0.97, "auroc/msp": 0.96}, {"ood_set": "noise"}),
        _run("fake-a", "t2", {"best_val_auroc": 0.60, "auroc/msp": 0.55}, {"ood_set": "fakedata"}),
        _run("fake-b", "t3", {"best_val_auroc": 0.70, "auroc/msp": 0.65}, {"ood_set": "fakedata"}),
        _run("fake-c", "t4", {"best_val_auroc": 0.90, "auroc/msp": 0.88}, {"ood_set": "fakedata"}, status="FAILED")]}
    _, rows = lab_tables.scores(table, study, [cells])
    assert rows == [["fakedata", "msp", "0.6500", "-", "-", "-", "fake-b"],
                    ["noise", "msp", "0.9800", "-", "-", "-", "noise-a"]]
    pinned = {"children": [_run("noise-new", "t0", {"best_val_auroc": 0.95, "auroc/msp": 0.94}, {"ood_set": "noise"})]}
    _, rows = lab_tables.scores(table, study, [pinned, cells])
    assert [r[-1] for r in rows] == ["fake-b", "noise-new"]
