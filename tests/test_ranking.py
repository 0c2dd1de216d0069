"""orchestrator.ranking: one meaning of "the best trial" (metric, mode, ties broken by id)."""
from __future__ import annotations

import itertools
import math

import pytest

from orchestrator.ranking import best, best_value, rank, row_id, score


def _row(trial_id: str, **metrics: float) -> dict:
    return {"trial_id": trial_id, "run_id": f"run-{trial_id}", "metrics": metrics}


ROWS = [_row("t3", val_acc=0.9), _row("t1", val_acc=0.9), _row("t2", val_acc=0.5), _row("t0", val_acc=0.7)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(ROWS)))))
def test_ties_are_broken_by_id_whatever_the_input_order(order):
    rows = [ROWS[i] for i in order]
    assert [r["trial_id"] for r in rank(rows, "val_acc", "max")] == ["t1", "t3", "t0", "t2"]
    assert best(rows, "val_acc", "max")["trial_id"] == "t1"
    assert [r["trial_id"] for r in rank(rows, "val_acc", "min")] == ["t2", "t0", "t1", "t3"]


def test_min_and_max_modes():
    rows = [_row("a", loss=0.3), _row("b", loss=0.1), _row("c", loss=0.2)]
    assert best(rows, "loss", "min")["trial_id"] == "b"
    assert best(rows, "loss", "max")["trial_id"] == "a"
    assert best_value([0.3, 0.1, 0.2], "min") == 0.1 and best_value([0.3, 0.1, 0.2], "max") == 0.3
    with pytest.raises(ValueError, match="mode"):
        rank(rows, "loss", "maximum")
    with pytest.raises(ValueError, match="mode"):
        best_value([1.0], "best")


def test_nan_missing_and_non_numbers_are_not_ranked():
    rows = [_row("a", val_acc=math.nan), _row("b"), _row("c", val_acc=math.inf), _row("d", val_acc=0.2),
            {"trial_id": "e", "metrics": {"val_acc": "n/a"}}, {"trial_id": "f", "metrics": {"val_acc": True}},
            {"trial_id": "g"}]
    assert [r["trial_id"] for r in rank(rows, "val_acc", "max")] == ["d"]
    assert [r["trial_id"] for r in rank(rows, "val_acc", "min")] == ["d"]
    assert best(rows[:3], "val_acc", "max") is None and rank([], "val_acc", "max") == []
    assert score(rows[0], "val_acc") is None and score(rows[3], "val_acc") == 0.2
    assert best_value([math.nan, 0.4, None, -math.inf, 0.6], "max") == 0.6
    assert best_value([math.nan, 0.4, None, math.inf, 0.6], "min") == 0.4
    with pytest.raises(ValueError):
        best_value([math.nan], "max")


def test_rows_read_back_from_mlflow_break_ties_by_their_trial_id_tag():
    """A report's runs carry the trial id as a tag: a tie goes where the tracker's summary sent it."""
    runs = [{"run_id": "aaa", "tags": {"trial_id": "t9"}, "metrics": {"val_acc": 0.8}},
            {"run_id": "zzz", "tags": {"trial_id": "t1"}, "metrics": {"val_acc": 0.8}}]
    assert best(runs, "val_acc", "max")["run_id"] == "zzz"
    assert row_id({"run_id": "r"}) == "r" and row_id({"trial_id": "t", "run_id": "r"}) == "t"
    by_run = best(runs, "val_acc", "max", key=lambda r: r["run_id"])
    assert by_run["run_id"] == "aaa"


def test_a_metric_pattern_expands_to_every_matching_metric_in_numeric_order():
    from orchestrator.ranking import expand_metrics

    rows = [{"metrics": {"acc_eps/0.1000": 0.5, "acc_eps/0.0000": 0.9, "pgd_acc_eps/0.1000": 0.1}},
            {"metrics": {"acc_eps/0.0250": 0.7, "acc_eps/0.3000": 0.1, "test_acc": 0.9}}]
    assert expand_metrics(("test_acc", "acc_eps/*", "success_rate"), rows) == [
        "test_acc", "acc_eps/0.0000", "acc_eps/0.0250", "acc_eps/0.1000", "acc_eps/0.3000", "success_rate"]
    assert expand_metrics(("acc_eps/*",), []) == []
