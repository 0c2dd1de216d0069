"""Train once, probe many: the cost of a post-hoc study (Lab 4 `ood` on the quick profile: a digits CNN
and its autoencoder, 10 epochs, then ODIN / energy / autoencoder scores) with N trials, the old way
(every trial trains the model, then probes it) against the new (the first trial trains it into the
study's shared folder, the others load it and only probe), in the same run.

(a) trial-seconds: the N trials run in-process one after another (`robustness.train`, what a Tune
    trial calls), interleaved old / new; the ratio is new / old of their summed time. Goal: <= 0.3
    for N = 6.
(b) wall time of the study through `run.py` (a private local Ray, 2 trials at a time), old and new
    once each (not in --quick); the old way is the driver with its model resolution switched off
    (a benchmark-side patch: no shared folder, so each trial trains its own).

    python benchmarks/posthoc.py [--quick] [--trials N]
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from common import Verdict, finish, interleaved, median, parser, repeats_of, start_ray

STUDY = ("lab4", "ood")
TEMPERATURES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def configs(n: int, epochs: int) -> list[Any]:
    """N trials of the quick ood study: the same model, N settings of ODIN (what the search varies)."""
    from orchestrator.studies import get_study
    from trainables.config import from_dict
    from trainables.lab4.robustness import Lab4Config

    base = {**get_study(*STUDY).base_config("quick"), "epochs": epochs, "seed": 0}
    return [from_dict(Lab4Config, {**base, "temperature": float(TEMPERATURES[i % len(TEMPERATURES)]),
                                   "odin_eps": 0.0002 * i}) for i in range(n)]


def trial_seconds(cfgs: list[Any], shared: bool) -> float:
    """Summed time of the trials run one after another (a fresh shared folder per measurement)."""
    from trainables.context import LocalContext
    from trainables.lab4.robustness import train

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        for cfg in cfgs:
            train(replace(cfg, source_cache=cache) if shared else cfg, LocalContext())
        return time.perf_counter() - start


def study_wall(n: int, epochs: int, folder: Path, shared: bool) -> float:
    """Wall time of `run.py lab4 --study ood --num-samples N` (2 trials at a time)."""
    from orchestrator import session
    from orchestrator.cli import main

    run = folder / f"{'new' if shared else 'old'}-{time.monotonic_ns()}"
    args = ["lab4", "--study", STUDY[1], "--num-samples", str(n), "--max-concurrent", "2", "--quiet",
            "--storage", str(run / "ray_results"), "--mlflow-uri", f"sqlite:///{run}/mlflow.db",
            "--report-dir", str(run / "report"), "--set", f"epochs={epochs}"]
    run.mkdir(parents=True)
    resolve = session.resolve_source
    if not shared:  # the old way: no shared folder, each trial trains the model it probes
        session.resolve_source = lambda study, base, lookup: base
    try:
        start = time.perf_counter()
        rc = main(args)
        wall = time.perf_counter() - start
    finally:
        session.resolve_source = resolve
    if rc != 0:
        raise RuntimeError(f"run.py {' '.join(args)} exited with {rc}")
    return wall


def main(argv: Sequence[str] | None = None) -> Verdict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=6, help="trials of the study (default 6)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # a 1-CPU trial
    epochs = 3 if args.quick else 10
    cfgs = configs(args.trials, epochs)
    runs = interleaved({"old": lambda: trial_seconds(cfgs, False), "new": lambda: trial_seconds(cfgs, True)},
                       repeats_of(args))
    old, new = median(runs["old"]), median(runs["new"])
    rows = [(f"(a) {args.trials} trials, each trains then probes", old, "trial-s"),
            (f"(a) {args.trials} trials, one trains, all probe", new, "trial-s"),
            ("(a) one trial's share, new way", new / args.trials, "s")]
    notes = [f"quick ood study, {epochs} epochs, {args.trials} trials, {len(runs['old'])} interleaved repeats "
             "(medians), 1 torch thread"]
    extra: dict[str, Any] = {"runs": runs}
    if not args.quick:
        start_ray()
        with tempfile.TemporaryDirectory() as folder:
            walls = {way: study_wall(args.trials, epochs, Path(folder), way == "new") for way in ("old", "new")}
        rows += [("(b) run.py study wall time, old way", walls["old"], "s"),
                 ("(b) run.py study wall time, new way", walls["new"], "s"),
                 ("(b) ratio new / old", walls["new"] / walls["old"], "x")]
        extra["walls"] = walls
        notes.append("(b) includes the driver's fixed costs (Ray Tune start, MLflow, report), the same both ways")
    v = Verdict("post-hoc study: train once, probe many vs train in every trial", new / old,
                "new / old trial-seconds", "<=", 0.3, rows=rows, notes=notes, extra=extra)
    return finish(v, args)


if __name__ == "__main__":
    main()
