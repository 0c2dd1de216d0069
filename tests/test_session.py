"""The session's choices of "the best trial" go through orchestrator.ranking: the summary line and
the configurations `--repeats` re-runs (best of each compared group, groups best first)."""
from __future__ import annotations

import dataclasses

from orchestrator.session import _describe_best, repeat_points
from orchestrator.studies import get_study


def _row(trial_id: str, value: float | None, **params) -> dict:
    return {"trial_id": trial_id, "params": params, "metrics": {} if value is None else {"val_acc": value}}


ROWS = [_row("t3", 0.80, depth=2, residual=True), _row("t1", 0.90, depth=8, residual=False),
        _row("t2", 0.90, depth=2, residual=True), _row("t4", float("nan"), depth=4, residual=True),
        _row("t5", None, depth=16, residual=True), _row("t0", 0.70, depth=8, residual=False)]


class FakeTracker:
    mode = "max"

    def __init__(self, rows: list[dict]) -> None:
        self._rows = rows

    def rows(self) -> list[dict]:
        return self._rows


def test_repeats_take_the_best_of_each_group_best_group_first():
    study = get_study("lab1", "residual-mlp")  # report_by: depth, residual
    points = repeat_points(study, ROWS, seeds=[0, 1])
    # t1 and t2 tie at 0.90: the lower trial id wins; t4 (NaN) and t5 (no metric) are not ranked.
    assert points == [{"depth": 8, "residual": False, "seed": 0}, {"depth": 8, "residual": False, "seed": 1},
                      {"depth": 2, "residual": True, "seed": 0}, {"depth": 2, "residual": True, "seed": 1}]
    overall = dataclasses.replace(study, cells=(), report_by=(), findings=(), cell_references=())
    assert repeat_points(overall, ROWS, seeds=[5]) == [{"depth": 8, "residual": False, "seed": 5}]
    assert repeat_points(dataclasses.replace(study, mode="min"), ROWS, seeds=[0])[0]["depth"] == 8  # t0: 0.70


def test_summary_names_the_best_trial_among_those_that_reported():
    assert _describe_best(FakeTracker(ROWS), "val_acc") == "best val_acc=0.9000 (depth=8, residual=False) over 4 trials"
    assert _describe_best(FakeTracker([_row("t", None, depth=1)]), "val_acc") == "no trial reported"
