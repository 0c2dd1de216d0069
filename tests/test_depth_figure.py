"""The residual studies' parent figure contrasts plain and residual gradient norms at the deepest
depth where both ran (not the best trial's profile), next to accuracy vs depth."""
from __future__ import annotations

import matplotlib.pyplot as plt

from trainables.lab1.figures import depth_comparison


def _row(depth: int, residual: bool, acc: float, norms: list[float] | None) -> dict:
    first = {f"grad_norm/{i:02d}": v for i, v in enumerate(norms or [])}
    return {"params": {"depth": depth, "residual": residual, "lr": 1e-3}, "metrics": {"val_acc": acc, **first},
            "first_epoch": {"epoch": 1, **first}}


def test_the_gradient_panel_is_plain_against_residual_at_the_deepest_shared_depth():
    rows = [_row(2, False, 0.9, [1e-2, 1e-2, 1e-2]), _row(2, True, 0.92, [1e-2, 1e-2, 1e-2]),
            _row(16, False, 0.1, [1e-9, 1e-5, 1e-2]), _row(16, False, 0.11, [1e-8, 1e-5, 1e-2]),
            _row(16, True, 0.95, [1e-2, 1e-2, 1e-2]),
            _row(32, True, 0.96, [1e-2, 1e-2, 1e-2])]  # no plain net at 32: not the panel's depth
    fig = depth_comparison(rows)
    acc, grads = fig.axes
    assert grads.get_title() == "gradient norms at depth 16, first epoch"
    lines = {line.get_label(): list(line.get_ydata()) for line in grads.get_lines()}
    assert lines == {"plain (val_acc 0.11)": [1e-8, 1e-5, 1e-2], "residual (val_acc 0.95)": [1e-2, 1e-2, 1e-2]}
    assert {line.get_label() for line in acc.get_lines()} == {"residual=False", "residual=True"}
    plt.close(fig)


def test_without_a_shared_depth_the_panel_says_so():
    fig = depth_comparison([_row(2, True, 0.9, [1.0]), _row(4, False, 0.5, None)])
    assert "no depth with both" in fig.axes[1].texts[0].get_text()
    plt.close(fig)
    assert depth_comparison([]) is None
