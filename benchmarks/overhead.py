"""Per-trial overhead: the same Lab 1 trainable and work (a) in-process, (b) as a one-trial Tune study
through the orchestrator's CLI, (c) the same under Ray Train (TorchTrainer, one worker).

The work is the quick `residual-cnn` profile (digits, CNN depth 2, residual, lr 3e-3) for as many
epochs as ~30 s in-process (calibrated on one epoch; ~5 s with --quick). All three use the same CPU
budget: the trial gets `--cpus` CPUs (Ray sets OMP_NUM_THREADS to that in the trial) and the
in-process run `torch.set_num_threads(--cpus)`. Ray is started once, before, and its start-up is
reported on its own; the MLflow store is created before as well (a one-off per store). The CLI runs
are instrumented with a Tune callback (driver side, given to the CLI's `main(callbacks=...)`) that
splits the fixed cost: driver set-up until Tune starts the study, Tune's start until the trial
starts, trial start-up (actor, imports, data) until its first epoch, per-epoch cost in the trial
vs in-process, and what follows the last result (MLflow close, summary, report).
Goal: (b)/(a) <= 1.07.

    python benchmarks/overhead.py [--quick] [--cpus 1]
"""
from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from common import Verdict, fresh_actor_per_trial, finish, median, parser, repeats_of, start_ray

# Train's worker start-up bounded on a loaded machine (its default retries forever).
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")

STUDY = ("lab1", "residual-cnn")
PINS = {"depth": 2, "residual": True, "lr": 3e-3}


def work_config(epochs: int) -> dict[str, Any]:
    from orchestrator.studies import get_study

    return {**get_study(*STUDY).base_config("quick"), "seed": 0, **PINS, "epochs": epochs}


def in_process(epochs: int) -> dict[str, float]:
    """(a): wall time of `lab1.train` with a LocalContext, and its per-epoch times."""
    from trainables.config import from_dict
    from trainables.context import LocalContext
    from trainables.lab1.classifier import Lab1Config, train

    stamps: list[float] = []

    class Timed(LocalContext):
        def report(self, *args: Any, **kwargs: Any) -> None:
            super().report(*args, **kwargs)
            stamps.append(time.perf_counter())

    start = time.perf_counter()
    train(from_dict(Lab1Config, work_config(epochs)), Timed())
    end = time.perf_counter()
    epoch_s = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"wall_s": end - start, "first_epoch_s": stamps[0] - start, "epoch_s": median(epoch_s or [0.0])}


def stopwatch() -> Any:
    """A driver-side Tune callback: when the trial started, when each result arrived."""
    from ray import tune

    class Stopwatch(tune.Callback):
        def __init__(self) -> None:
            self.tune_start: float | None = None  # tuner.fit() set up the study's run (its callbacks)
            self.trial_start: float | None = None
            self.results: list[tuple[float, dict[str, Any]]] = []
            self.events: list[tuple[str, str, float]] = []  # (event, trial id, time) of every trial

        def setup(self, **info: Any) -> None:
            self.tune_start = self.tune_start or time.perf_counter()

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.trial_start = self.trial_start or time.perf_counter()
            self.events.append(("start", trial.trial_id, time.perf_counter()))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.events.append(("complete", trial.trial_id, time.perf_counter()))

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.results.append((time.perf_counter(), result))
            self.events.append(("result", trial.trial_id, time.perf_counter()))

    return Stopwatch()


def between_trials(cpus: float, folder: Path, uri: str, reuse: bool, trials: int = 3) -> dict[str, float]:
    """A `trials`-trial study of 2-epoch trials run one after another (see `trial_gap`); `reuse`:
    as the orchestrator runs it (Tune reuses the trial process), else a fresh process per trial."""
    with contextlib.nullcontext() if reuse else fresh_actor_per_trial():
        return through_cli(2, cpus, folder, uri, ray_train=False, samples=trials, pins=PINS)


def through_cli(epochs: int, cpus: float, folder: Path, uri: str, ray_train: bool, samples: int = 1,
                pins: dict[str, Any] | None = None) -> dict[str, float]:
    """(b) / (c): wall time of `run.py lab1 --study residual-cnn` with one trial, and where it went."""
    from orchestrator.cli import main

    sets = [f"{k}={v}" for k, v in {**(PINS if pins is None else pins), "epochs": epochs}.items()]
    if ray_train:
        sets.append("train_backend=ray-train")
    run = folder / f"run-{time.monotonic_ns()}"
    args = ["lab1", "--study", STUDY[1], "--num-samples", str(samples), "--max-concurrent", "1",
            "--cpus-per-trial", str(cpus), "--quiet", "--storage", str(run / "ray_results"), "--mlflow-uri", uri,
            "--report-dir", str(run / "report"), "--set", *sets]
    watch = stopwatch()
    start = time.perf_counter()
    rc = main(args, callbacks=[watch])
    end = time.perf_counter()
    if rc != 0:
        raise RuntimeError(f"run.py {' '.join(args)} exited with {rc}")
    out = {"wall_s": end - start}
    if watch.trial_start is not None and watch.results:
        first_t, first = watch.results[0]
        last_t = watch.results[-1][0]
        gaps = [b[0] - a[0] for a, b in zip(watch.results, watch.results[1:])]
        began = watch.tune_start or start
        out.update(driver_setup_s=began - start, fit_to_trial_start_s=watch.trial_start - began,
                   to_first_result_s=first_t - watch.trial_start,
                   first_epoch_in_trial_s=float(first.get("time_this_iter_s", 0.0)),
                   epoch_s=median(gaps or [0.0]), after_last_result_s=end - last_t)
        out.update(gap_between_trials_s=trial_gap(watch.events, watch.results))
    return out


def trial_gap(events: list[tuple[str, str, float]], results: list[tuple[float, dict[str, Any]]]) -> float:
    """Median over consecutive trials of: next trial's first result - previous trial's last result
    - the next trial's first epoch (as the trial timed it): the fixed cost of one more trial,
    including the tracker's work on the finished one. NaN with a single trial."""
    first_epoch = {r.get("trial_id"): float(r.get("time_this_iter_s", 0.0)) for _, r in reversed(results)}
    firsts: dict[str, float] = {}
    lasts: dict[str, float] = {}
    for event, trial, t in events:
        if event == "result":
            firsts.setdefault(trial, t)
            lasts[trial] = t
    order = sorted(firsts, key=firsts.get)
    gaps = [firsts[nxt] - lasts[prev] - first_epoch.get(nxt, 0.0) for prev, nxt in zip(order, order[1:])]
    return median(gaps) if gaps else float("nan")


def cold_import_s(module: str) -> float:
    """Seconds to import `module` in a fresh Python that already has ray (a Ray worker's state)."""
    import subprocess
    import sys

    code = f"import time, ray; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def calibrate(target_s: float) -> int:
    """Epochs of the work that take about target_s in-process (from a 2-epoch run's steady epoch)."""
    probe = in_process(2)
    return max(3, round(target_s / max(probe["epoch_s"], 1e-3)))


def main(argv: Sequence[str] | None = None) -> Verdict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, default=1, help="CPUs of the trial = torch threads in-process (default 1)")
    p.add_argument("--seconds", type=float, default=0, help="in-process work to aim at (default 30, quick 5)")
    p.add_argument("--no-extras", action="store_true",
                   help="only (a) and (b): no TorchTrainer run (c), no 3-trial studies, no import timing (--quick)")
    p.add_argument("--train-poll", type=float, default=0,
                   help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S for (c) (default: the orchestrator's, 0.1 s; Ray's "
                        "own is 2 s, see README)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.cpus)
    epochs = calibrate(args.seconds or (5.0 if args.quick else 30.0))
    # Set before ray.init, as orchestrator.tuning.connect_ray does: the Train controller inherits it.
    from orchestrator.tuning import WORKER_ENV

    os.environ.update(WORKER_ENV)
    if args.train_poll:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(args.train_poll)
    ray_s = start_ray()
    folder = Path(tempfile.mkdtemp(prefix="dla-bench-overhead-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    t = time.perf_counter()
    # The only MLflow importer: mlflow's import is counted here as before, and with it the tracker's own
    # (matplotlib), which the CLI row below no longer includes.
    from orchestrator.tracking import init_store

    init_store(uri)  # creates the store (schema migrations): once per store
    store_s = time.perf_counter() - t

    t = time.perf_counter()
    for module in ("orchestrator.cli", "orchestrator.session"):  # the driver's imports, once per `run.py`
        importlib.import_module(module)
    import_s = time.perf_counter() - t
    extras = not (args.quick or args.no_extras)
    modules = ("trainables.lab1.classifier", "orchestrator.execution")
    trial_imports = {m: cold_import_s(m) for m in modules} if extras else {m: float("nan") for m in modules}

    runs: dict[str, list[dict[str, float]]] = {"a": [], "b": [], "c": [], "study_fresh": [], "study": []}
    for _ in range(repeats_of(args)):
        runs["a"].append(in_process(epochs))
        runs["b"].append(through_cli(epochs, args.cpus, folder, uri, ray_train=False))
        if extras:
            runs["c"].append(through_cli(epochs, args.cpus, folder, uri, ray_train=True))
    if extras:  # the per-trial cost inside a study, as run and with a fresh process per trial (~1 min)
        runs["study_fresh"].append(between_trials(args.cpus, folder, uri, reuse=False))
        runs["study"].append(between_trials(args.cpus, folder, uri, reuse=True))

    def med(key: str, field: str) -> float:
        values = [r[field] for r in runs[key] if field in r]
        return median(values) if values else float("nan")

    a, b = med("a", "wall_s"), med("b", "wall_s")
    rows = [("epochs of work", epochs, ""), ("(a) in-process", a, "s"), ("(b) one Tune trial via run.py", b, "s")]
    if runs["c"]:
        rows += [("(c) same, under TorchTrainer (1 worker)", med("c", "wall_s"), "s"),
                 ("study of 3 trials: between trials (trial process reused)", med("study", "gap_between_trials_s"),
                  "s"),
                 ("    same with a fresh process per trial", med("study_fresh", "gap_between_trials_s"), "s")]
    rows += [("fixed cost (b) - (a)", b - a, "s"), ("ray.init (once, not in (b))", ray_s, "s"),
             ("MLflow store creation (once per store)", store_s, "s"),
             ("driver imports of the CLI (once per invocation)", import_s, "s"),
             ("trial process imports: orchestrator.execution", trial_imports["orchestrator.execution"], "s"),
             ("    of which trainables.lab1.classifier (torch, torchvision)", trial_imports["trainables.lab1.classifier"], "s"),
             ("(b) driver set-up until Tune started the study", med("b", "driver_setup_s"), "s"),
             ("(b) Tune's start until the trial started", med("b", "fit_to_trial_start_s"), "s"),
             ("(b) trial start until 1st result", med("b", "to_first_result_s"), "s"),
             ("    of which the 1st epoch in the trial", med("b", "first_epoch_in_trial_s"), "s"),
             ("(a) 1st epoch (data, model, epoch)", med("a", "first_epoch_s"), "s"),
             ("(b) epoch, result to result", med("b", "epoch_s"), "s"),
             ("(a) epoch", med("a", "epoch_s"), "s"),
             ("(b) after the last result (close, report)", med("b", "after_last_result_s"), "s")]
    if runs["c"]:
        rows += [("(c) trial start until 1st result", med("c", "to_first_result_s"), "s"),
                 ("(c) epoch, result to result", med("c", "epoch_s"), "s")]
    v = Verdict("per-trial overhead: Tune trial via the orchestrator vs in-process", b / a,
                "(b) Tune trial / (a) in-process (wall s)", "<=", 1.07, rows=rows,
                notes=[f"{args.cpus} CPU(s) per trial, torch threads {args.cpus} in-process; medians of "
                       f"{len(runs['a'])} interleaved repeat(s)"]
                + ([f"a study's later trials reuse the trial process: "
                    f"{med('study', 'gap_between_trials_s'):.2f} s each instead of "
                    f"{med('study_fresh', 'gap_between_trials_s'):.2f} s; (b)/(a) for a later trial "
                    f"~ {(a + med('study', 'gap_between_trials_s')) / a:.3f}"]
                   if runs["study"] else []),
                extra={"runs": runs, "epochs": epochs, "ray_init_s": ray_s, "mlflow_store_s": store_s,
                       "driver_import_s": import_s, "trial_imports_s": trial_imports})
    import ray

    ray.shutdown()
    return finish(v, args)


if __name__ == "__main__":
    main()
