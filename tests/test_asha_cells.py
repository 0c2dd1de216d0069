"""ASHA stops real Tune trials, within their cell only: in Tune (a private Ray), a weak trial of a
cell is stopped at the grace period by the cell's better trial, while the best trial of a cell that
learns slower than every trial of another cell runs to its last epoch. One plain ASHA over all
trials stops that trial too: the reason the studies use orchestrator.tuning.CellASHA."""
from __future__ import annotations

import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from orchestrator.tuning import CellASHA

EPOCHS, GRACE = 8, 2
# Run one at a time, in this order: the shallow cell's trials first, so that they set a high bar.
ORDER = [{"cell": "shallow", "k": 1.0}, {"cell": "shallow", "k": 0.5}, {"cell": "deep", "k": 1.0},
         {"cell": "deep", "k": 0.5}]


def _learner(config):
    """val_acc rises every epoch; a deep cell learns at 0.2 the rate of a shallow one, k scales both."""
    rate = (0.9 if config["cell"] == "shallow" else 0.2) * config["k"]
    for epoch in range(1, EPOCHS + 1):
        tune.report({"val_acc": rate * epoch / EPOCHS})


def _epochs_run(scheduler, storage) -> dict[tuple[str, float], int]:
    tuner = tune.Tuner(
        tune.with_resources(_learner, {"cpu": 4}),  # all of ray_local's CPUs: one trial at a time, in ORDER
        param_space={"cell": tune.choice(["shallow", "deep"]), "k": tune.choice([1.0, 0.5])},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", scheduler=scheduler, num_samples=len(ORDER),
                                    search_alg=BasicVariantGenerator(points_to_evaluate=list(ORDER)), reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0))
    grid = tuner.fit()
    assert not grid.errors
    return {(r.config["cell"], r.config["k"]): int(r.metrics["training_iteration"]) for r in grid}


@pytest.mark.slow
def test_asha_stops_a_weak_trial_within_its_cell_and_spares_a_slower_cell(ray_local, tmp_path):
    asha = dict(time_attr="training_iteration", max_t=EPOCHS, grace_period=GRACE, reduction_factor=2)
    by_cell = _epochs_run(CellASHA(("cell",), **asha), tmp_path / "cells")
    assert by_cell == {("shallow", 1.0): EPOCHS, ("shallow", 0.5): GRACE, ("deep", 1.0): EPOCHS,
                       ("deep", 0.5): GRACE}
    # One ASHA over every trial: the deep cell's best trial falls below the shallow bar and is stopped.
    plain = _epochs_run(ASHAScheduler(**asha), tmp_path / "plain")
    assert plain[("deep", 1.0)] == GRACE and plain[("shallow", 1.0)] == EPOCHS
