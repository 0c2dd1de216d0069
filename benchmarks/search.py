"""Search efficiency: TPE + ASHA (the orchestrator's search) vs grid search on the Lab 1 `residual-cnn`
quick space (depth {1, 2, 4, 8} x residual {no, yes} x lr in [1e-3, 1e-2], log).

The grid is depth x residual x lr {1e-3, 3.16e-3, 1e-2}: 24 trials of the quick profile's 8 epochs =
192 trial-epochs, run in-process (one process per core). Its target is the best validation
accuracy any grid trial reached at any epoch. TPE + ASHA runs through the orchestrator's own tuner
(`orchestrator.tuning.build_tuner`: OptunaSearch with a seeded TPESampler, ASHA with the study's
grace period of 2 epochs and reduction factor 2 within each cell, on `val_acc`; the study's depth x
residual cells enqueued in turn, TPE choosing lr), one trial at a time, up to 24 trials,
for several search seeds; it counts the trial-epochs every trial used until one reports the target.
The ratio is the median of those counts over the grid's 192. Goal: <= 1/3. Every trial trains with
seed 0 (the CLI's default), so grid and search see the same noise. Gradient-norm probes are off:
they do not change the training.

    python benchmarks/search.py [--quick]
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from common import Verdict, finish, median, parser, start_ray

STUDY = ("lab1", "residual-cnn")
GRID = {"depth": [1, 2, 4, 8], "residual": [False, True], "lr": [1e-3, 10 ** -2.5, 1e-2]}
QUICK_GRID = {"depth": [1, 2], "residual": [False, True], "lr": [10 ** -2.5]}


def base_config(epochs: int) -> dict[str, Any]:
    from orchestrator.studies import get_study

    return {**get_study(*STUDY).base_config("quick"), "seed": 0, "grad_norms": False, "epochs": epochs}


def grid_trial(point: dict[str, Any], epochs: int) -> list[float]:
    """Validation accuracy after each epoch of one grid point (runs in a pool process)."""
    import torch

    from trainables.config import from_dict
    from trainables.context import LocalContext
    from trainables.lab1.classifier import Lab1Config, train

    torch.set_num_threads(1)
    ctx = LocalContext()
    train(from_dict(Lab1Config, {**base_config(epochs), **point}), ctx)
    return [r["val_acc"] for r in ctx.reports]


def run_grid(grid: dict[str, list[Any]], epochs: int, workers: int) -> list[tuple[dict[str, Any], list[float]]]:
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        curves = list(pool.map(grid_trial, points, [epochs] * len(points)))
    return list(zip(points, curves))


def recorder() -> Any:
    from ray import tune

    class Recorder(tune.Callback):
        """Every result, in arrival order: (trial id, epoch, val_acc)."""

        def __init__(self) -> None:
            self.results: list[tuple[str, int, float]] = []

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.results.append((trial.trial_id, int(result["training_iteration"]), float(result["val_acc"])))

    return Recorder()


def run_tpe_asha(seed: int, samples: int, epochs: int, folder: Path) -> list[tuple[str, int, float]]:
    """One TPE + ASHA search through the orchestrator's tuner, trials one at a time."""
    from orchestrator.execution import TrialSpec
    from orchestrator.studies import get_study
    from orchestrator.tuning import TuneOptions, build_tuner

    study = dataclasses.replace(get_study(*STUDY), early_stopping=True)  # the study itself compares depths: no ASHA
    spec = TrialSpec(lab=STUDY[0], study=STUDY[1], base=base_config(epochs), storage=str(folder))
    opts = TuneOptions(num_samples=samples, max_concurrent=1, seed=seed, storage=str(folder),
                       name=f"search-seed{seed}-{time.monotonic_ns()}", verbose=0)
    rec = recorder()
    build_tuner(study, spec, opts, [rec], epochs=epochs).fit()
    return rec.results


def epochs_to_reach(results: list[tuple[str, int, float]], target: float) -> float:
    """Trial-epochs consumed (each result is one) until the first result >= target; inf if never."""
    for used, (_, _, acc) in enumerate(results, 1):
        if acc >= target:
            return float(used)
    return math.inf


def main(argv: Sequence[str] | None = None) -> Verdict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=0, help="TPE seeds (default 3, quick 1)")
    args = p.parse_args(argv)
    import os

    grid = QUICK_GRID if args.quick else GRID
    epochs = 2 if args.quick else 8
    n_grid = math.prod(len(v) for v in grid.values())
    samples = 4 if args.quick else n_grid
    start = time.perf_counter()
    table = run_grid(grid, epochs, max(1, os.cpu_count() or 1))
    grid_s = time.perf_counter() - start
    best_point, best_curve = max(table, key=lambda pc: max(pc[1]))
    n_val = 270  # digits: 1,797 images x val_fraction 0.15
    target = max(best_curve) - 0.5 / n_val  # float tolerance below one validation image
    grid_epochs = n_grid * epochs

    start_ray()
    folder = Path(tempfile.mkdtemp(prefix="dla-bench-search-"))
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    searches = {s: run_tpe_asha(s, samples, epochs, folder) for s in seeds}
    reached = {s: epochs_to_reach(r, target) for s, r in searches.items()}
    within_one = {s: epochs_to_reach(r, target - 1 / n_val) for s, r in searches.items()}  # one image less
    used = {s: len(r) for s, r in searches.items()}
    needed = median(list(reached.values()))
    import ray

    ray.shutdown()
    rows = [("grid trials x epochs", grid_epochs, "trial-epochs"),
            ("grid's best val_acc", max(best_curve), f"({best_point})"),
            ("grid wall time (in-process, pool)", grid_s, "s")]
    for s in seeds:
        rows.append((f"TPE+ASHA seed {s}: trial-epochs to reach it", reached[s],
                     f"(of {used[s]} used by {samples} trials)"))
    v = Verdict("search efficiency: TPE + ASHA vs grid (lab1 residual-cnn quick space)", needed / grid_epochs,
                "TPE+ASHA trial-epochs to the grid's best / grid trial-epochs (median over seeds)", "<=", 1 / 3,
                rows=rows, notes=["inf = the search never reached the grid's best within its trials",
                                  f"within one validation image of it (1/{n_val}): trial-epochs "
                                  f"{[within_one[s] for s in seeds]}, "
                                  f"ratio {median(list(within_one.values())) / grid_epochs:.3f}"],
                extra={"grid": [{"point": pt, "val_acc": c} for pt, c in table], "searches": searches,
                       "reached": reached, "within_one_image": within_one, "target": target})
    return finish(v, args)


if __name__ == "__main__":
    main()
