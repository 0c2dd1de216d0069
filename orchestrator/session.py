"""Runs planned studies one after another on a Ray connection, each logged to MLflow; resumes a
study whose driver died (`--resume`). Everything it needs comes in a `RunOptions` (orchestrator.options)."""
from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow.fs as pafs
from ray import tune  # [cluster #13] `import ray` went with check_fits
from ray.tune.search import Searcher

from . import placement  # [cluster #13]
from .execution import TrialSpec
from .options import REPO, Planned, RunOptions, UsageError, report_dir
from .provenance import git_commit
from .ranking import rank
from .sources import resolve_source
from .studies import Study, get_study
from .tracking import Lookup, MlflowTracker, default_uri, ensure_server, find_parent, stop_server
from .tuning import TuneOptions, build_tuner, connect_ray, make_trainable, study_tuner

STATE_FILE = "dla_study.pkl"  # beside Tune's own state: what --resume needs to rebuild the study


@dataclass(frozen=True)
class StudyState:
    spec: TrialSpec
    opts: TuneOptions
    profile: str


def _filesystem(storage: str) -> tuple[pafs.FileSystem, str]:
    """Storage is a local folder or a URI (s3://, gs://, ...): pyarrow reaches both, as Tune does."""
    if "://" in storage:
        return pafs.FileSystem.from_uri(storage)
    return pafs.LocalFileSystem(), str(Path(storage).resolve())


def save_state(storage: str, name: str, state: StudyState) -> None:
    fs, root = _filesystem(storage)
    fs.create_dir(f"{root}/{name}", recursive=True)
    with fs.open_output_stream(f"{root}/{name}/{STATE_FILE}") as f:
        f.write(pickle.dumps(state))


def load_state(experiment: str) -> StudyState:
    fs, path = _filesystem(experiment)
    with fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
        return pickle.loads(f.read())


def latest_experiment(storage: str, study: Study) -> str | None:
    """The newest Tune experiment of `study` under storage (its path or URI), if any."""
    fs, root = _filesystem(storage)
    prefix = f"{study.lab}-{study.name}-"
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)
                   and fs.get_file_info(f"{i.path}/{STATE_FILE}").type == pafs.FileType.File)
    return f"{storage.rstrip('/')}/{names[-1]}" if names else None


def _describe_best(tracker: MlflowTracker, metric: str) -> str:
    ranked = rank(tracker.rows(), metric, tracker.mode)
    if not ranked:
        return "no trial reported"
    top = ranked[0]
    params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(top["params"].items()))
    return f"best {metric}={top['metrics'][metric]:.4f} ({params}) over {len(ranked)} trials"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class FixedPoints(Searcher):
    """Suggests the given configs in order, then says it is finished (Tune's BasicVariantGenerator
    wants every key in a param space; these configs are complete already)."""

    def __init__(self, points: list[dict[str, Any]], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.points = list(points)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        return self.points.pop(0) if self.points else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


def repeat_points(study: Study, rows: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """The best sampled config of each `study.report_by` group (or the best overall), once per seed."""
    chosen: dict[tuple, dict[str, Any]] = {}
    for r in rank(rows, study.metric, study.mode):  # best first: the first row of a group is its best
        chosen.setdefault(tuple(str(r["params"].get(k)) for k in study.report_by), r["params"])
    return [{**params, "seed": seed} for params in chosen.values() for seed in seeds]


def run_repeats(study: Study, spec: TrialSpec, opts: TuneOptions, parent: MlflowTracker, k: int,
                callbacks: Sequence[Any] = ()) -> bool:
    """Re-runs the search's best configurations with k seeds, as a second invocation (tag
    repeats_of = the search's parent run); the report shows mean ± std."""
    points = repeat_points(study, parent.rows(), [opts.seed + i for i in range(k)])
    if not points:
        return True
    tracker = MlflowTracker(parent.uri, experiment=study.lab, run_name=f"{study.name} [repeats x{k}]",
                            tags={"lab": study.lab, "study": study.name, "kind": "repeats",
                                  "repeats_of": parent.parent_id}, params={"repeats": k, "configs": len(points) // k},
                            resolve=spec.resolve, compare=None, metric=study.metric, mode=study.mode)
    print(f"== {study.key}: {len(points)} repeat trials ({len(points) // k} configs x {k} seeds)", flush=True)
    tuner = study_tuner(spec, opts, [tracker, *callbacks], f"{opts.name}-repeats", num_samples=len(points),
                        search_alg=FixedPoints(points, study.metric, study.mode),
                        max_concurrent_trials=opts.max_concurrent)
    return _fit(study, tracker, tuner)


def _fit(study: Study, tracker: MlflowTracker, tuner: tune.Tuner) -> bool:
    """Runs the tuner; every MLflow run is ended whatever happens. False when interrupted."""
    interrupted = False
    try:
        tuner.fit()  # Tune turns a first Ctrl-C into a graceful stop; a second one raises here
    except KeyboardInterrupt:
        interrupted = True
    finally:
        tracker.close(interrupted=interrupted)
    interrupted = interrupted or bool(tracker.killed)
    print(f"== {study.key}: {_describe_best(tracker, study.metric)}{' (INTERRUPTED)' if interrupted else ''}",
          flush=True)
    return not interrupted


def start_study(p: Planned, opts: RunOptions, *, ray_mode: str, gpus: float, callbacks: Sequence[Any] = ()) -> bool:
    study, storage = p.study, opts.storage
    name = f"{study.lab}-{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_dir = f"{storage.rstrip('/')}/{name}"
    # Inputs a study prepares (a source model) go where trials can read them: the storage folder
    # (shared on a cluster); with a URI storage, the launch folder (single-node use only).
    inputs = Path(exp_dir) / "inputs" if "://" not in storage else opts.launch / "inputs" / name
    base = p.base
    if study.source is not None:
        try:
            base = resolve_source(study, dict(base), Lookup(opts.mlflow_uri, inputs))
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"{study.key}: {e}") from None
    spec = TrialSpec(lab=study.lab, study=study.name, base=base, pins=p.pins, data_dir=str(opts.data_dir),
                     workers=opts.workers_per_trial, backend=p.run_keys.get("train_backend", "auto"),
                     cpus_per_worker=opts.cpus_per_trial, gpus_per_worker=gpus, storage=storage,
                     max_failures=opts.max_failures)
    num_samples = opts.num_samples or study.profiles[opts.profile].trials
    tune_opts = TuneOptions(num_samples=num_samples, max_concurrent=opts.max_concurrent, seed=opts.seed,
                            storage=storage, name=name, cpus_per_trial=opts.cpus_per_trial, gpus_per_trial=gpus,
                            verbose=0 if opts.quiet else 1)
    save_state(storage, name, StudyState(spec, tune_opts, opts.profile))
    tags = {"lab": study.lab, "study": study.name, "profile": opts.profile, "git_commit": git_commit(REPO),
            "ray": ray_mode, "tune_experiment": exp_dir}
    params = {"study": study.key, "profile": opts.profile, "num_samples": num_samples,
              "max_concurrent": opts.max_concurrent, "workers_per_trial": opts.workers_per_trial,
              "cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": gpus, "train_backend": spec.backend,
              "seed": opts.seed, "pinned": ",".join(sorted(p.pins)) or "-"}
    tracker = MlflowTracker(opts.mlflow_uri, experiment=study.lab, run_name=f"{study.name} [{opts.profile}]",
                            tags=tags, params=params, resolve=spec.resolve, compare=study.compare,
                            metric=study.metric, mode=study.mode)
    print(f"== {study.key} ({opts.profile}): {num_samples} trials; MLflow parent run {tracker.parent_id}", flush=True)
    guard = placement.StallGuard(opts.wait_for_nodes, tracker)  # [cluster #13] a trial that waits too long ends the study
    tuner = build_tuner(study, spec, tune_opts, [tracker, guard, *callbacks], epochs=getattr(spec.resolve({}), "epochs", 1))
    if not _fit(study, tracker, tuner):
        return False
    return run_repeats(study, spec, tune_opts, tracker, opts.repeats, callbacks) if opts.repeats else True


def resume_study(exp_dir: str, *, uri: str, callbacks: Sequence[Any] = ()) -> bool:
    """Restores the Tune experiment (trials, searcher state) and goes on with a fresh tracker that
    reopens the invocation's parent run. Settings come from the saved study state, not the CLI."""
    state = load_state(exp_dir)
    spec, opts = state.spec, state.opts
    study = get_study(spec.lab, spec.study)
    parent = find_parent(uri, study.lab, str(exp_dir))
    tracker = MlflowTracker(uri, experiment=study.lab, run_name="", tags={}, params={}, resolve=spec.resolve,
                            compare=study.compare, metric=study.metric, mode=study.mode, reopen=parent) if parent \
        else MlflowTracker(uri, experiment=study.lab, run_name=f"{study.name} [{state.profile}] (resumed)",
                           tags={"lab": study.lab, "study": study.name, "profile": state.profile,
                                 "tune_experiment": str(exp_dir)}, params={}, resolve=spec.resolve,
                           compare=study.compare, metric=study.metric, mode=study.mode)
    tuner = tune.Tuner.restore(str(exp_dir), trainable=make_trainable(spec, opts), resume_errored=True)
    # tuner.pkl holds the dead driver's callbacks; the tracker must be this process's.
    tuner._local_tuner.get_run_config().callbacks = [tracker, *callbacks]
    print(f"== {study.key}: resuming {exp_dir}; MLflow parent run {tracker.parent_id}", flush=True)
    return _fit(study, tracker, tuner)


def run_planned(planned: list[Planned], opts: RunOptions, *, callbacks: Sequence[Any] = ()) -> int:
    """Runs (or, with `opts.resume`, resumes) the planned studies in turn, then writes the report.
    `callbacks`: extra Tune callbacks given to every study's tuner (e.g. a benchmark's stopwatch).
    Returns the exit code: 0, or 130 when a study was interrupted."""
    # Experiment state is saved after every result; with sub-second epochs Tune warns about it each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    uri = opts.mlflow_uri
    server = ensure_server(uri, opts.launch)
    try:
        ray_mode = connect_ray(opts.ray_address)
        # [cluster #13] each study's trial checked against the nodes up and those the autoscaler can add
        shapes = placement.prepare(planned, opts, ray_mode)
        for p in planned:
            if opts.resume is not None:
                ok = resume_study(opts.resume[p.study.key], uri=uri, callbacks=callbacks)
            else:
                placement.wait_for_nodes(shapes[p.study.key], opts.wait_for_nodes, p.study.key)  # [cluster #13]
                ok = start_study(p, opts, ray_mode=ray_mode, gpus=shapes[p.study.key].gpus, callbacks=callbacks)
            if not ok:
                return 130
        from .report import build_report

        path = build_report(uri, planned[0].study.lab, [p.study for p in planned],
                            report_dir(opts.report_dir, planned[0].study.lab))
    finally:
        stop_server(server)
    shown = default_uri(opts.launch) if server is not None else uri
    print(f"MLflow: {uri}  (open it with: mlflow ui --backend-store-uri {shown})")
    print(f"report: {path}")
    return 0
