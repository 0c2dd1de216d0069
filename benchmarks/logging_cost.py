"""MLflow logging cost: the orchestrator's tracker (orchestrator/tracking/callback.py) per epoch, per trial and
per study, against the trial time of the quick profile.

One real quick-profile trial of Lab 1 `residual-cnn` (digits, CNN, gradient norms on: ~25 metrics
an epoch) runs in-process; its per-epoch metrics and final checkpoint (state + files) are kept.
The tracker is then driven the way Tune drives it (`TrialView`s for trials, as in tests/test_tracking.py,
no Ray): a parent run, and for each of the study's trials a child run with the resolved config,
every epoch's metrics flushed at once (flush_s=0: the worst case; the driver batches them every 2 s),
the curves figure, the checkpoint's files and model.pt; at the end the study summary, comparison
figure and trials.json. The tracker runs in the driver, off the trials' processes; its hooks queue
the writes for its writer thread, so what holds up Tune's event loop is the queueing. Measured twice:
"held" (hooks as Tune calls them: the time they hold the caller) and "work" (the writer waited for
after every hook: what each write costs the writer thread, on a core of its own on a GPU machine).
Goal: (per-trial time held + per-study cost / trials) < 1% of trial time.

    python benchmarks/logging_cost.py [--quick]
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from common import Verdict, finish, median, parser, repeats_of

STUDY = ("lab1", "residual-cnn")
SAMPLED = {"depth": 2, "residual": True, "lr": 3e-3}


def one_trial(epochs: int, folder: Path) -> tuple[float, list[dict[str, float]], Path]:
    """Runs the quick-profile trial in-process: (seconds, per-epoch metrics, final checkpoint folder)."""
    from orchestrator.studies import get_study
    from trainables.config import from_dict
    from trainables.context import LocalContext, write_checkpoint

    study = get_study(*STUDY)
    cfg = from_dict(study.config_cls, {**study.base_config("quick"), "seed": 0, **SAMPLED,
                                       **({"epochs": epochs} if epochs else {})})
    ctx = LocalContext()
    start = time.perf_counter()
    study.trainable(cfg, ctx)
    seconds = time.perf_counter() - start
    write_checkpoint(folder, ctx.last_state, ctx.files)
    return seconds, ctx.reports, folder


def log_study(uri: str, trials: int, history: list[dict[str, float]], checkpoint: Path,
              wait_for_writer: bool) -> dict[str, float]:
    """Drives a fresh MlflowTracker through one study of `trials` identical trials: seconds each hook
    held the caller (Tune's event loop), or with `wait_for_writer`, seconds until the writer had done
    that hook's work."""
    from ray import tune

    from orchestrator.studies import get_study
    from orchestrator.tracking import MlflowTracker, TrialView
    from trainables.config import from_dict
    from trainables.context import FINAL_KEY

    study = get_study(*STUDY)
    base = {**study.base_config("quick"), "seed": 0}
    t0 = time.perf_counter()
    tracker = MlflowTracker(uri, experiment=study.lab, run_name=f"{study.name} [bench]", tags={"study": study.name},
                            params={"profile": "quick"}, resolve=lambda c: from_dict(study.config_cls, {**base, **c}),
                            compare=study.compare, metric=study.metric, mode=study.mode, flush_s=0.0)
    t1 = time.perf_counter()

    def timed(hook: Any, *args: Any) -> float:
        t = time.perf_counter()
        hook(0, [], *args)
        if wait_for_writer:
            tracker.drain()
        return time.perf_counter() - t

    starts, epochs, completes = [], [], []
    for i in range(trials):
        trial = TrialView(f"bench{i:03d}", dict(SAMPLED))
        starts.append(timed(tracker.on_trial_start, trial))
        for e, metrics in enumerate(history, 1):
            result = {**metrics, "training_iteration": e, "time_this_iter_s": 0.1, "pid": 1, "done": e == len(history)}
            if e == len(history):  # the trial ran to its end: the tracker logs its model.pt
                result[FINAL_KEY] = 1
            trial.last_result = result
            epochs.append(timed(tracker.on_trial_result, trial, result))
        trial.checkpoint = tune.Checkpoint.from_directory(str(checkpoint))
        completes.append(timed(tracker.on_trial_complete, trial))
    tracker.drain()  # the backlog (held mode) is written while trials train, not at the end
    t2 = time.perf_counter()
    tracker.close()
    t3 = time.perf_counter()
    return {"study_open_s": t1 - t0, "study_close_s": t3 - t2, "trial_start_s": median(starts),
            "epoch_s": median(epochs), "trial_complete_s": median(completes),
            "per_trial_s": median(starts) + median(epochs) * len(history) + median(completes)}


def main(argv: Sequence[str] | None = None) -> Verdict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    import torch

    from orchestrator.studies import get_study

    torch.set_num_threads(1)  # what a 1-CPU trial gets (Ray sets OMP_NUM_THREADS)
    study = get_study(*STUDY)
    trials = 3 if args.quick else study.trials("quick")
    folder = Path(tempfile.mkdtemp(prefix="dla-bench-logging-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    from orchestrator.tracking import init_store

    init_store(uri)  # the store's one-off creation is not logging cost
    trial_s, held, work = [], [], []
    history: list[dict[str, float]] = []
    for r in range(repeats_of(args)):
        seconds, history, ckpt = one_trial(3 if args.quick else 0, folder / f"ckpt{r}")
        trial_s.append(seconds)
        held.append(log_study(uri, trials, history, ckpt, wait_for_writer=False))
        work.append(log_study(uri, trials, history, ckpt, wait_for_writer=True))

    def med(key: str, of: list[dict[str, float]] = held) -> float:
        return median([c[key] for c in of])

    trial = median(trial_s)
    per_study = med("study_open_s") + med("study_close_s")
    cost = med("per_trial_s") + per_study / trials
    writer = med("per_trial_s", work)
    v = Verdict("MLflow logging cost vs trial time (quick profile)", cost / trial,
                "Tune's loop held per trial (incl. its share of the study's) / trial time", "<=", 0.01,
                rows=[("trial (quick residual-cnn, in-process)", trial, "s"),
                      ("epochs per trial / metrics per epoch", len(history), f"/ {len(history[0]) if history else 0}"),
                      ("trials per study", trials, ""),
                      ("held per epoch (queueing the metrics)", med("epoch_s") * 1000, "ms"),
                      ("held per trial, all hooks", med("per_trial_s") * 1000, "ms"),
                      ("per study: parent run (before the tuner starts)", med("study_open_s") * 1000, "ms"),
                      ("per study: summary, comparison figure, trials.json (after it)", med("study_close_s") * 1000,
                       "ms"),
                      ("writer per epoch: metrics flushed at once", med("epoch_s", work) * 1000, "ms"),
                      ("writer per trial: child run + params", med("trial_start_s", work) * 1000, "ms"),
                      ("writer per trial: figures, files, model.pt, status", med("trial_complete_s", work) * 1000,
                       "ms"),
                      ("writer per trial, all", writer * 1000, "ms")],
                notes=["the tracker runs in the Tune driver: its hooks only queue work for one writer thread "
                       "(one SQLite writer), which writes while the trials train",
                       f"the writer thread spends {writer / trial:.3f} of a trial's time (one core; the "
                       "trials' own compute is elsewhere)"],
                extra={"trial_s": trial_s, "held": held, "work": work, "writer_share": writer / trial})
    return finish(v, args)


if __name__ == "__main__":
    main()
