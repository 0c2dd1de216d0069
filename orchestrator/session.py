"""Runs planned studies one after another on a Ray connection, each logged to MLflow."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import ray

from .cli import REPO, Planned, UsageError
from .execution import TrialSpec
from .tracking import Lookup, MlflowTracker, default_uri, git_commit
from .tuning import TuneOptions, build_tuner, connect_ray


def _describe_best(tracker: MlflowTracker, metric: str) -> str:
    rows = [r for r in tracker.rows() if metric in r["metrics"]]
    if not rows:
        return "no trial reported"
    best = max(rows, key=lambda r: r["metrics"][metric]) if tracker.mode == "max" else min(rows, key=lambda r: r["metrics"][metric])
    params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(best["params"].items()))
    return f"best {metric}={best['metrics'][metric]:.4f} ({params}) over {len(rows)} trials"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def run_one(p: Planned, args: argparse.Namespace, *, storage: str, data_dir: Path, uri: str,
            ray_mode: str, gpus: float) -> bool:
    """Runs one study; returns False when it was interrupted."""
    study = p.study
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{study.lab}-{study.name}-{stamp}"
    base = p.base
    if study.prepare is not None:
        try:
            base = study.prepare(dict(base), Lookup(uri, Path(storage) / name / "inputs"))
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"{study.key}: {e}") from None
    spec = TrialSpec(lab=study.lab, study=study.name, base=base, pins=p.pins, data_dir=str(data_dir),
                     workers=args.workers_per_trial, backend=p.run_keys.get("train_backend", "auto"),
                     cpus_per_worker=args.cpus_per_trial, gpus_per_worker=gpus, storage=storage,
                     max_failures=args.max_failures)
    num_samples = args.num_samples or study.num_samples[args.profile]
    opts = TuneOptions(num_samples=num_samples, max_concurrent=args.max_concurrent, seed=args.seed, storage=storage,
                       name=name, cpus_per_trial=args.cpus_per_trial,
                       gpus_per_trial=gpus, verbose=0 if args.quiet else 1)
    tags = {"lab": study.lab, "study": study.name, "profile": args.profile, "git_commit": git_commit(REPO),
            "ray": ray_mode, "tune_experiment": os.path.join(storage, opts.name)}
    params = {"study": study.key, "profile": args.profile, "num_samples": num_samples,
              "max_concurrent": args.max_concurrent, "workers_per_trial": args.workers_per_trial,
              "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": gpus, "train_backend": spec.backend,
              "seed": args.seed, "pinned": ",".join(sorted(p.pins)) or "-"}
    tracker = MlflowTracker(uri, experiment=study.lab, run_name=f"{study.name} [{args.profile}]", tags=tags,
                            params=params, resolve=spec.resolve, compare=study.compare, metric=study.metric,
                            mode=study.mode)
    print(f"== {study.key} ({args.profile}): {num_samples} trials; MLflow parent run {tracker.parent_id}", flush=True)
    interrupted = True
    try:
        tuner = build_tuner(study, spec, opts, [tracker], epochs=spec.resolve({}).epochs)
        tuner.fit()
        interrupted = False
    finally:
        tracker.close(interrupted=interrupted)
    interrupted = any(run for run in tracker.killed)
    print(f"== {study.key}: {_describe_best(tracker, study.metric)}"
          f"{' (INTERRUPTED)' if interrupted else ''}", flush=True)
    return not interrupted


def run_planned(planned: list[Planned], args: argparse.Namespace, *, storage: str, data_dir: Path, launch: Path) -> int:
    # Experiment state is saved after every result; with sub-second epochs Tune warns about it each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(launch)
    ray_mode = connect_ray(args.ray_address)
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    for p in planned:
        gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (p.study.gpus_per_trial if has_gpu else 0.0)
        if not run_one(p, args, storage=storage, data_dir=data_dir, uri=uri, ray_mode=ray_mode, gpus=gpus):
            return 130
    print(f"MLflow: {uri}  (open it with: mlflow ui --backend-store-uri {uri})")
    return 0
