"""A study's expected finding judged on its trial rows (orchestrator/verdicts.py): holds, does not
hold or inconclusive by Welch's 95% interval of treatment − control, on hand-made rows; pure and fast."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from orchestrator.verdicts import DEEPEST, SHALLOWEST, Finding, Verdict, judge, judge_all, welch_interval

RESIDUAL = Finding(claim="residual connections keep the deepest MLP trainable", metric="val_acc", factor="residual",
                   treatment=True, control=False, at={"depth": DEEPEST}, labels=("residual", "plain"))


def cell(depth: int, residual: object, values: list[float], metric: str = "val_acc") -> list[dict]:
    """One row per seed: a trained model of the cell (depth, residual) and its metric."""
    return [{"depth": depth, "residual": residual, "seed": s, metric: v} for s, v in enumerate(values)]


def finding(**kw: object) -> Finding:
    return Finding(**{"claim": "c", "metric": "val_acc", "factor": "residual", "treatment": True, "control": False,
                      **kw})


# ---------------------------------------------------------------- the three labels


def test_a_clear_gain_holds() -> None:
    rows = cell(32, True, [0.93, 0.92, 0.94]) + cell(32, False, [0.10, 0.11, 0.09])
    v = judge(RESIDUAL, rows)
    assert (v.label, v.at, v.n_treatment, v.n_control) == ("holds", {"depth": 32}, 3, 3)
    assert v.effect == pytest.approx(0.83)
    assert v.low is not None and v.high is not None and 0 < v.low < 0.83 < v.high


def test_a_clear_loss_does_not_hold() -> None:
    rows = cell(32, True, [0.10, 0.11, 0.09]) + cell(32, False, [0.93, 0.92, 0.94])
    v = judge(RESIDUAL, rows)
    assert v.label == "does not hold" and v.high is not None and v.high < 0
    assert v.line().endswith(": does not hold")


def test_overlapping_cells_are_inconclusive() -> None:
    rows = cell(32, True, [0.5, 0.9, 0.6]) + cell(32, False, [0.4, 0.8, 0.7])
    v = judge(RESIDUAL, rows)
    assert v.label == "inconclusive" and v.low is not None and v.low < 0 < v.high
    assert "interval contains the margin" in v.reason


def test_a_gain_smaller_than_the_margin_does_not_hold() -> None:
    rows = cell(32, True, [0.52, 0.53, 0.52]) + cell(32, False, [0.50, 0.51, 0.50])
    assert judge(RESIDUAL, rows).label == "holds"
    v = judge(finding(at={"depth": 32}, margin=0.1), rows)
    assert v.label == "does not hold" and v.high < 0.1


def test_mode_min_claims_the_treatment_lowers_the_metric() -> None:
    rows = cell(8, True, [0.2, 0.21, 0.19], "val_loss") + cell(8, False, [0.9, 0.91, 0.89], "val_loss")
    lower = judge(finding(metric="val_loss", mode="min", at={"depth": 8}), rows)
    assert lower.label == "holds" and lower.effect == pytest.approx(-0.7) and lower.high < 0
    assert judge(finding(metric="val_loss", mode="max", at={"depth": 8}), rows).label == "does not hold"
    # the margin is on the oriented effect: a 0.7 drop does not clear a 0.8 margin
    assert judge(finding(metric="val_loss", mode="min", at={"depth": 8}, margin=0.8), rows).label == "does not hold"


# ---------------------------------------------------------------- too few samples


def test_one_seed_per_side_is_inconclusive_whatever_the_estimate() -> None:
    v = judge(RESIDUAL, cell(32, True, [0.93]) + cell(32, False, [0.10]))
    assert (v.label, v.low, v.high, v.n_treatment, v.n_control) == ("inconclusive", None, None, 1, 1)
    assert v.effect == pytest.approx(0.83)
    assert v.reason == "1 seed per side: run --repeats K for an interval"


def test_one_seed_on_one_side_is_inconclusive() -> None:
    v = judge(RESIDUAL, cell(32, True, [0.93, 0.94, 0.95]) + cell(32, False, [0.10]))
    assert v.label == "inconclusive" and v.low is None and "--repeats" in v.reason and "on a side" in v.reason


def test_no_cell_with_both_levels_is_inconclusive() -> None:
    v = judge(RESIDUAL, cell(32, True, [0.9, 0.9]) + cell(8, False, [0.1, 0.1]))
    assert (v.label, v.effect, v.reason) == ("inconclusive", None, "no cell with both levels ran")
    assert judge(RESIDUAL, []).label == "inconclusive"


# ---------------------------------------------------------------- which cell: DEEPEST, fixed values


def test_deepest_is_the_deepest_depth_that_has_both_levels() -> None:
    rows = (cell(8, True, [0.9, 0.91]) + cell(8, False, [0.8, 0.81])
            + cell(32, True, [0.7, 0.71]) + cell(32, False, [0.1, 0.11])
            + cell(64, True, [0.6, 0.61]))  # only residual reached depth 64
    v = judge(RESIDUAL, rows)
    assert v.at == {"depth": 32} and v.effect == pytest.approx(0.6)
    shallow = judge(finding(at={"depth": SHALLOWEST}), rows)
    assert shallow.at == {"depth": 8} and shallow.effect == pytest.approx(0.1)


def test_deepest_ignores_a_depth_whose_rows_have_no_finite_metric() -> None:
    rows = cell(8, True, [0.9, 0.91]) + cell(8, False, [0.8, 0.81]) + cell(64, True, [0.6]) + cell(64, False, [math.nan])
    assert judge(RESIDUAL, rows).at == {"depth": 8}


def test_other_fixed_factors_select_the_cell() -> None:
    rows = ([{**r, "width": 64} for r in cell(32, True, [0.9, 0.9]) + cell(32, False, [0.1, 0.1])]
            + [{**r, "width": 3} for r in cell(32, True, [0.1, 0.1]) + cell(32, False, [0.9, 0.9])])
    assert judge(finding(at={"depth": DEEPEST, "width": 64}), rows).label == "holds"
    assert judge(finding(at={"depth": DEEPEST, "width": 3}), rows).label == "does not hold"


def test_the_compared_factor_can_be_an_int() -> None:
    rows = [{"width": w, "seed": s, "val_acc": a} for w, acc in ((64, [0.9, 0.92]), (3, [0.3, 0.31]))
            for s, a in enumerate(acc)]
    v = judge(finding(factor="width", treatment=64, control=3), rows)
    assert (v.label, v.n_treatment, v.n_control) == ("holds", 2, 2)
    assert v.line().startswith("width=64 − width=3 val_acc: +")


# ---------------------------------------------------------------- what counts as a sample


def test_bool_levels_match_only_bools() -> None:
    rows = (cell(32, True, [0.5, 0.5]) + cell(32, False, [0.5, 0.5])
            + cell(32, 1, [1.0, 1.0, 1.0]) + cell(32, 0, [0.0, 0.0, 0.0]))
    v = judge(RESIDUAL, rows)
    assert (v.n_treatment, v.n_control, v.effect) == (2, 2, 0.0)


def test_a_false_row_never_counts_as_treatment() -> None:
    v = judge(RESIDUAL, cell(32, False, [0.1, 0.2]) + cell(32, False, [0.3, 0.4]))
    assert (v.n_treatment, v.label) == (0, "inconclusive")


def test_an_int_level_does_not_match_a_bool_row() -> None:
    rows = [{"width": True, "val_acc": 0.9}, {"width": True, "val_acc": 0.9},
            {"width": 1, "val_acc": 0.2}, {"width": 1, "val_acc": 0.3},
            {"width": 2, "val_acc": 0.1}, {"width": 2, "val_acc": 0.2}]
    v = judge(finding(factor="width", treatment=1, control=2), rows)
    assert v.effect == pytest.approx(0.1)


def test_rows_without_a_finite_metric_are_ignored() -> None:
    rows = (cell(32, True, [0.9, 0.92, math.nan, math.inf]) + cell(32, False, [0.1, 0.12, -math.inf])
            + [{"depth": 32, "residual": True, "seed": 9}, {"depth": 32, "residual": False, "val_acc": None},
               {"depth": 32, "residual": True, "val_acc": "0.5"}, {"depth": 32, "residual": True, "val_acc": True}])
    v = judge(RESIDUAL, rows)
    assert (v.n_treatment, v.n_control, v.label) == (2, 2, "holds")
    assert v.effect == pytest.approx(0.8)


def test_records_read_back_from_mlflow_and_unfinished_runs() -> None:
    def record(residual: bool, acc: float, status: str = "FINISHED") -> dict:
        return {"status": status, "sampled": {"depth": 32, "residual": residual},
                "params": {"depth": "32", "residual": str(residual)}, "metrics": {"val_acc": acc}}

    rows = [record(True, 0.9), record(True, 0.91), record(False, 0.1), record(False, 0.11),
            record(False, 0.99, "FAILED"), record(True, 0.0, "RUNNING")]
    v = judge(RESIDUAL, rows)
    assert (v.at, v.n_treatment, v.n_control, v.label) == ({"depth": 32}, 2, 2, "holds")
    assert v.effect == pytest.approx(0.8)


# ---------------------------------------------------------------- the interval


def test_the_interval_is_welchs_by_hand() -> None:
    # mean diff 2; se² = 1/3 + 0; Welch–Satterthwaite dof = (1/3)² / ((1/3)² / 2) = 2, where Student's
    # t has a closed-form quantile: t(p, 2) = (2p − 1) / sqrt(2p(1 − p))
    low, high = welch_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * math.sqrt(1 / 3)
    assert (low, high) == pytest.approx((2 - half, 2 + half), rel=1e-12)


@pytest.mark.parametrize("a, b", [([0.93, 0.91, 0.95, 0.90, 0.94], [0.10, 0.15, 0.08, 0.12, 0.11]),
                                  ([0.5, 0.9, 0.6], [0.4, 0.8, 0.7, 0.45, 0.61, 0.2]),
                                  ([1.0, 1.1], [0.2, 0.4, 0.3])])
def test_the_interval_matches_scipy(a: list[float], b: list[float]) -> None:
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    v = judge(RESIDUAL, cell(32, True, a) + cell(32, False, b))
    assert (v.low, v.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_zero_variance_collapses_the_interval_to_the_point() -> None:
    v = judge(RESIDUAL, cell(32, True, [0.9, 0.9, 0.9]) + cell(32, False, [0.4, 0.4]))
    assert v.low == v.high == v.effect == pytest.approx(0.5) and v.label == "holds"
    tie = judge(RESIDUAL, cell(32, True, [0.4, 0.4]) + cell(32, False, [0.4, 0.4]))
    assert (tie.effect, tie.low, tie.high, tie.label) == (0.0, 0.0, 0.0, "inconclusive")


# ---------------------------------------------------------------- the report's line


def test_the_line_of_a_finding_that_holds() -> None:
    rows = cell(32, True, [0.95, 0.93, 0.97]) + cell(32, False, [0.10, 0.08, 0.12])
    v = judge(RESIDUAL, rows)
    half = stats.t.ppf(0.975, 4) * math.sqrt(0.02 ** 2 / 3 * 2)
    assert v.line() == f"residual − plain val_acc at depth=32: +0.850 [{0.85 - half:+.3f}, {0.85 + half:+.3f}] (3 vs 3 seeds): holds"
    assert v.line() == "residual − plain val_acc at depth=32: +0.850 [+0.805, +0.895] (3 vs 3 seeds): holds"


def test_the_line_of_one_seed_per_side() -> None:
    v = judge(RESIDUAL, cell(32, True, [0.53]) + cell(32, False, [0.10]))
    assert v.line() == ("residual − plain val_acc at depth=32: +0.430 (1 vs 1 seeds): "
                        "inconclusive (1 seed per side: run --repeats K for an interval)")


def test_the_line_when_nothing_ran() -> None:
    assert judge(RESIDUAL, []).line() == ("residual − plain val_acc at depth=max: no samples: "
                                          "inconclusive (no cell with both levels ran)")


def test_judge_all_keeps_the_findings_order() -> None:
    rows = cell(32, True, [0.9, 0.91]) + cell(32, False, [0.1, 0.11])
    flipped = finding(treatment=False, control=True, at={"depth": DEEPEST})
    assert [v.label for v in judge_all([RESIDUAL, flipped], rows)] == ["holds", "does not hold"]
    assert all(isinstance(v, Verdict) for v in judge_all([RESIDUAL], rows))


# ---------------------------------------------------------------- a finding is checked as it is written


@pytest.mark.parametrize("kw, field", [({"mode": "best"}, "mode"), ({"control": True}, "treatment"),
                                       ({"at": {"residual": True}}, "at"), ({"labels": ("residual",)}, "labels"),
                                       ({"margin": math.nan}, "margin"), ({"metric": ""}, "metric"),
                                       ({"claim": " "}, "claim"), ({"factor": ""}, "factor")])
def test_a_malformed_finding_names_its_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"Finding\.{field}"):
        finding(**kw)


def test_true_and_one_are_different_levels() -> None:
    assert finding(treatment=True, control=1).control == 1


# ---------------------------------------------------------------- properties

samples = st.lists(st.floats(-100, 100, allow_nan=False, allow_infinity=False), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(t=samples, c=samples, margin=st.floats(-5, 5), mode=st.sampled_from(["max", "min"]))
def test_the_label_agrees_with_the_interval(t: list[float], c: list[float], margin: float, mode: str) -> None:
    v = judge(finding(at={"depth": DEEPEST}, margin=margin, mode=mode), cell(4, True, t) + cell(4, False, c))
    assert v.effect is not None
    if min(len(t), len(c)) < 2:
        assert (v.label, v.low, v.high) == ("inconclusive", None, None)
        return
    assert v.low <= v.high and v.low - 1e-9 <= v.effect <= v.high + 1e-9
    low, high = (v.low, v.high) if mode == "max" else (-v.high, -v.low)
    assert v.label == ("holds" if low > margin else "does not hold" if high < margin else "inconclusive")


@settings(max_examples=300, deadline=None)
@given(t=samples, c=samples)
def test_swapping_treatment_and_control_negates_the_effect_and_interval(t: list[float], c: list[float]) -> None:
    rows = cell(4, True, t) + cell(4, False, c)
    v, w = judge(finding(), rows), judge(finding(treatment=False, control=True), rows)
    assert w.effect == -v.effect and (w.n_treatment, w.n_control) == (v.n_control, v.n_treatment)
    if v.low is None:
        assert w.low is None and w.high is None
    else:
        assert (w.low, w.high) == pytest.approx((-v.high, -v.low), rel=1e-9, abs=1e-9)
        flip = {"holds": "does not hold", "does not hold": "holds", "inconclusive": "inconclusive"}
        assert w.label == flip[v.label] or min(abs(v.low), abs(v.high)) < 1e-9  # a bound on 0 may round either way
