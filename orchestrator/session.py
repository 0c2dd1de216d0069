"""Runs planned studies one after another on a Ray connection, each logged to MLflow, and says how
each ended; resumes an invocation whose driver died (`--resume`): the study it was in, then the
studies that never started, `--repeats` included. Everything it needs comes in a `RunOptions`
(orchestrator.options); the invocation's progress is recorded in storage (orchestrator.invocation).

Exit codes (README, "Exit codes"): 0 when every trial of every study finished; 3 when some trials
(or a whole study) did not: each such study ends with one line `k of N trials failed (first error:
...; details: <error file>)`, the other studies still run and the report is written; 130 on Ctrl-C.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow.fs as pafs
from ray import tune  # [cluster #13] `import ray` went with check_fits
from ray.tune.search import Searcher

from trainables.context import FINAL_KEY

from . import invocation
from . import placement  # [cluster #13]
from .execution import TrialSpec
from .invocation import Invocation, Outcome, Progress, filesystem
from .options import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, REPO, Planned, RunOptions, report_dir
from .provenance import git_commit
from .ranking import rank
from .recovery import CheckpointLedger, ResumingTracker
from .sources import resolve_source
from .studies import Study
from .tracking import UI_APP, Lookup, MlflowTracker, Tested, default_uri, ensure_server, find_parent, stop_server
from .tuning import TuneOptions, build_tuner, connect_ray, make_trainable, study_tuner

STATE_FILE = "dla_study.pkl"  # beside Tune's own state: what --resume needs to rebuild the study


@dataclass(frozen=True)
class StudyState:
    """One Tune experiment of a study (its search, or its --repeats), saved before it starts."""

    spec: TrialSpec
    opts: TuneOptions
    profile: str
    # The parent run to create when the driver died before it existed, and (--repeats) the points
    # re-run. Added later: a state pickled before reads these class-level defaults.
    run_name: str = ""
    tags: Mapping[str, str] | None = None
    params: Mapping[str, Any] | None = None
    points: tuple[dict[str, Any], ...] | None = None
    targets: tuple[str, ...] | None = None  # a test phase: the search's child run each point tests


def save_state(storage: str, name: str, state: StudyState) -> None:
    fs, root = filesystem(storage)
    fs.create_dir(f"{root}/{name}", recursive=True)
    with fs.open_output_stream(f"{root}/{name}/{STATE_FILE}") as f:
        f.write(pickle.dumps(state))


def load_state(experiment: str) -> StudyState:
    fs, path = filesystem(experiment)
    with fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
        return pickle.loads(f.read())


def _restorable(experiment: str) -> bool:
    """Tune can restore the experiment: its tuner.pkl and a readable experiment state are on storage.
    A state file torn by a kill mid-copy is set aside, so that Tune takes the previous one."""
    fs, path = filesystem(experiment)
    if fs.get_file_info(f"{path}/tuner.pkl").type != pafs.FileType.File:
        return False
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    states = sorted((i.path for i in infos if i.base_name.startswith("experiment_state-")
                     and i.base_name.endswith(".json")), reverse=True)
    for state in states:
        try:
            with fs.open_input_stream(state) as f:
                json.loads(f.read())
            return True
        except (OSError, ValueError):
            fs.move(state, f"{state}.torn")
    return False


# ------------------------------------------------------------------------------ console
class TrialErrorsOffConsole(logging.Filter):
    """Tune logs every failed attempt of a trial with its whole traceback ("Trial task failed for
    trial ...", ray.tune.execution.tune_controller) and lists the failed trials at the end ("Trials
    did not complete", ray.tune.tune). The tracebacks are in each trial's error.txt and, as an
    artifact, in its MLflow run; the console gets one line per study (Outcome.line)."""

    DROPPED = ("Trial task failed for trial", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROPPED)


def keep_trial_errors_off_console() -> None:
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, TrialErrorsOffConsole) for f in logger.filters):
            logger.addFilter(TrialErrorsOffConsole())


def _describe_best(tracker: MlflowTracker, metric: str) -> str:
    ranked = rank(tracker.rows(), metric, tracker.mode)
    if not ranked:
        return "no trial reported"
    top = ranked[0]
    params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(top["params"].items()))
    return f"best {metric}={top['metrics'][metric]:.4f} ({params}) over {len(ranked)} trials"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------ failures
def _location(fs: pafs.FileSystem, path: str) -> str:
    return path if fs.type_name == "local" else f"{fs.type_name}://{path}"


def _error_line(fs: pafs.FileSystem, error_file: str, error: BaseException) -> str:
    """The failed trial's error as one line: the last line of its traceback (the exception)."""
    try:
        with fs.open_input_stream(error_file) as f:
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        if lines:
            return _one_line(lines[-1])
    except OSError:
        pass
    cause = getattr(error, "cause", None) or error
    return _one_line(f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}")


def _failures(key: str, grid: Any, ledger: CheckpointLedger, tracker: MlflowTracker) -> Outcome:
    """k of N: the trials of the experiment that ended in error, the first one's error and file.
    Each traceback also goes to its trial's MLflow run (artifact `errors/error.txt`)."""
    results = list(grid)
    failed = [r for r in results if r.error is not None]
    outcome = Outcome(key, trials=len(results), failed=len(failed))
    if not failed:
        return outcome
    first = failed[0]
    error_file = f"{first.path.rstrip('/')}/error.txt"
    outcome.details = _location(first.filesystem, error_file)
    outcome.first_error = _error_line(first.filesystem, error_file, first.error)
    by_path = {path.rstrip("/"): trial_id for trial_id, path in ledger.failed.items()}
    for r in failed:
        run_id = tracker.runs.get(by_path.get(r.path.rstrip("/"), ""))
        if run_id:
            _log_error_file(tracker, run_id, r.filesystem, f"{r.path.rstrip('/')}/error.txt")
    return outcome


def _log_error_file(tracker: MlflowTracker, run_id: str, fs: pafs.FileSystem, error_file: str) -> None:
    """The trial's traceback as an artifact of its run. Through the tracker's MLflow client: the
    tracker (orchestrator/tracking) does not log error files itself yet."""
    try:
        with tempfile.TemporaryDirectory(prefix="dla-error-") as tmp, fs.open_input_stream(error_file) as f:
            local = Path(tmp) / "error.txt"
            local.write_bytes(f.read())
            tracker.client.log_artifact(run_id, str(local), "errors")
    except Exception as e:  # the traceback is in the error file anyway
        logging.getLogger(__name__).warning("could not log %s to run %s: %s", error_file, run_id, e)


def _crashed(study: Study, error: BaseException, record: Invocation) -> Outcome:
    """A study the driver could not run to its end (an error outside the trials): the traceback goes
    to a file beside the invocation's record, the console gets one line."""
    fs, path = filesystem(record.path)
    details = f"{path.rpartition('.')[0]}-{study.name}-error.txt"
    try:
        with fs.open_output_stream(details) as f:
            f.write("".join(traceback.format_exception(error)).encode())
    except Exception:
        details = "(could not be written)"
    return Outcome(study.key, crashed=_one_line(f"{type(error).__name__}: {error}"), details=_location(fs, details))


# ------------------------------------------------------------------------------ Tune experiments
class FixedPoints(Searcher):
    """Suggests the given configs in order, then says it is finished (Tune's BasicVariantGenerator
    wants every key in a param space; these configs are complete already). Saves what is left, so
    that a restored --repeats experiment does not suggest a point twice."""

    def __init__(self, points: list[dict[str, Any]], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.points = list(points)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        return self.points.pop(0) if self.points else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.points, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.points = pickle.load(f)


def repeat_seeds(search_seed: int, k: int) -> list[int]:
    """K seeds, none the search's (each varies initialisation, batch order and the validation split)."""
    return [(search_seed + 1 + i) % 2**32 for i in range(k)]


def selected(study: Study, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best row of each `study.report_by` group (each compared cell), or the best overall."""
    chosen: dict[tuple, dict[str, Any]] = {}
    for r in rank(rows, study.metric, study.mode):  # best first: the first row of a group is its best
        chosen.setdefault(tuple(str(r["params"].get(k)) for k in study.report_by), r)
    return list(chosen.values())


def repeat_points(study: Study, rows: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """The best sampled config of each `study.report_by` group (or the best overall), once per seed."""
    return [{**r["params"], "seed": seed} for r in selected(study, rows) for seed in seeds]


def _tracker(study: Study, state: StudyState, experiment: str, uri: str, *, resuming: bool,
             restoring: bool) -> MlflowTracker:
    """The experiment's tracker: resuming, it reopens the parent run an earlier driver created for
    the experiment (tag tune_experiment), if any; else it creates the parent."""
    cls = ResumingTracker if restoring else MlflowTracker
    common = dict(resolve=state.spec.resolve, compare=None if state.points is not None else study.compare,
                  metric=study.metric, mode=study.mode, trial_figures=study.trial_figures)
    parent = find_parent(uri, study.lab, experiment) if resuming else None
    if parent is not None:
        return cls(uri, experiment=study.lab, run_name="", tags={}, params={}, reopen=parent, **common)
    tags = dict(state.tags or {"lab": study.lab, "study": study.name, "profile": state.profile})
    return cls(uri, experiment=study.lab, run_name=state.run_name or f"{study.name} [{state.profile}]",
               tags={**tags, "tune_experiment": experiment}, params=dict(state.params or {}), **common)


def _run_experiment(study: Study, state: StudyState, experiment: str, uri: str, callbacks: Sequence[Any],
                    *, resuming: bool, wait_for_nodes: float | None = None) -> tuple[Outcome, MlflowTracker]:
    """Runs one Tune experiment of the study: a new one, or (resuming) the restored one, repaired
    (orchestrator.recovery). A resumed experiment that never got as far as Tune's first state on
    storage starts over in its folder."""
    restoring = resuming and _restorable(experiment)
    tracker = _tracker(study, state, experiment, uri, resuming=resuming, restoring=restoring)
    ledger = CheckpointLedger(tracker if restoring else None, managed=not state.spec.uses_ray_train)
    # [cluster #13] trials that wait longer than --wait-for-nodes for nodes that never come end the study
    guard = [placement.StallGuard(wait_for_nodes, tracker)] if wait_for_nodes else []
    tune_callbacks = [ledger, tracker, *guard, *callbacks]
    spec, opts = state.spec, state.opts
    label = f"{study.key}{' repeats' if state.points is not None else ''}"
    if restoring:
        print(f"== {label}: resuming {experiment}; MLflow parent run {tracker.parent_id}", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable=make_trainable(spec, opts), resume_errored=True)
        # tuner.pkl holds the dead driver's callbacks; the tracker must be this process's.
        tuner._local_tuner.get_run_config().callbacks = tune_callbacks
    elif state.points is not None:
        points = list(state.points)
        print(f"== {label}: {len(points)} repeat trials; MLflow parent run {tracker.parent_id}", flush=True)
        tuner = study_tuner(spec, opts, tune_callbacks, opts.name, num_samples=len(points),
                            search_alg=FixedPoints(points, study.metric, study.mode),
                            max_concurrent_trials=opts.max_concurrent)
    else:
        print(f"== {label} ({state.profile}): {opts.num_samples} trials; MLflow parent run {tracker.parent_id}",
              flush=True)
        tuner = build_tuner(study, spec, opts, tune_callbacks, epochs=getattr(spec.resolve({}), "epochs", 1),
                            profile=state.profile)
    return _fit(label, study, tracker, tuner, ledger), tracker


def _fit(label: str, study: Study, tracker: MlflowTracker, tuner: tune.Tuner, ledger: CheckpointLedger) -> Outcome:
    """Runs the tuner; every MLflow run is ended whatever happens."""
    interrupted, grid = False, None
    try:
        grid = tuner.fit()  # Tune turns a first Ctrl-C into a graceful stop; a second one raises here
    except KeyboardInterrupt:
        interrupted = True
    finally:
        tracker.close(interrupted=interrupted)
    interrupted = interrupted or bool(tracker.killed)
    print(f"== {label}: {_describe_best(tracker, study.metric)}{' (INTERRUPTED)' if interrupted else ''}", flush=True)
    print(f"== {label}: MLflow {tracker.parent_url()}", flush=True)  # the study's parent run, in the UI
    if interrupted or grid is None:
        return Outcome(label, interrupted=True)
    outcome = _failures(label, grid, ledger, tracker)
    if outcome.failed:
        print(f"== {outcome.line()}", flush=True)
    return outcome


# ------------------------------------------------------------------------------ one study
def _warn_of_gaps(study: Study, pins: Mapping[str, Any], num_samples: int, profile: str) -> None:
    """One line when the budget leaves compared cells without a trial (the comparison has gaps)."""
    cells = study.cells_for(pins, profile)
    if num_samples < len(cells):
        factors = " x ".join(f for f in study.factors if f not in pins)
        print(f"== {study.key}: {num_samples} trials cover {num_samples} of its {len(cells)} cells ({factors}); "
              f"the comparison will have gaps (the {profile} default is {study.trials(profile, pins)})", flush=True)


def _new_search(p: Planned, opts: RunOptions, record: Invocation, progress: Progress, *, ray_mode: str,
                gpus: float, callbacks: Sequence[Any]) -> tuple[Outcome, MlflowTracker]:
    study, storage = p.study, opts.storage
    name = f"{study.lab}-{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = f"{storage.rstrip('/')}/{name}"
    # Inputs a study prepares (a source model) go where trials can read them: the storage folder
    # (shared on a cluster); with a URI storage, the launch folder (single-node use only).
    inputs = Path(experiment) / "inputs" if "://" not in storage else opts.launch / "inputs" / name
    base = resolve_source(study, dict(p.base), Lookup(opts.mlflow_uri, inputs)) if study.source else p.base
    spec = TrialSpec(lab=study.lab, study=study.name, base=base, pins=p.pins, data_dir=str(opts.data_dir),
                     workers=opts.workers_per_trial, backend=p.run_keys.get("train_backend", "auto"),
                     cpus_per_worker=opts.cpus_per_trial, gpus_per_worker=gpus, storage=storage,
                     max_failures=opts.max_failures, evaluate_test=not study.test_once)
    num_samples = opts.num_samples or study.trials(opts.profile, p.pins)
    _warn_of_gaps(study, p.pins, num_samples, opts.profile)
    tune_opts = TuneOptions(num_samples=num_samples, max_concurrent=opts.max_concurrent, seed=opts.seed,
                            storage=storage, name=name, cpus_per_trial=opts.cpus_per_trial, gpus_per_trial=gpus,
                            verbose=0 if opts.quiet else 1)
    tags = {"lab": study.lab, "study": study.name, "profile": opts.profile, "git_commit": git_commit(REPO),
            "ray": ray_mode, "tune_experiment": experiment}
    params = {"study": study.key, "profile": opts.profile, "num_samples": num_samples,
              "max_concurrent": opts.max_concurrent, "workers_per_trial": opts.workers_per_trial,
              "cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": gpus, "train_backend": spec.backend,
              "seed": opts.seed, "pinned": ",".join(sorted(p.pins)) or "-"}
    state = StudyState(spec, tune_opts, opts.profile, f"{study.name} [{opts.profile}]", tags, params)
    save_state(storage, name, state)
    progress.experiment = experiment
    record.save()  # before the parent run exists: a driver killed from here on is resumed in this experiment
    return _run_experiment(study, state, experiment, opts.mlflow_uri, callbacks, resuming=False,
                           wait_for_nodes=opts.wait_for_nodes)


def _new_repeats(study: Study, search: str, parent: MlflowTracker, k: int, record: Invocation, progress: Progress,
                 uri: str, callbacks: Sequence[Any], wait_for_nodes: float | None = None) -> Outcome:
    """Re-runs the search's best configurations with k seeds, as a second invocation (tag
    repeats_of = the search's parent run); the report shows mean ± std."""
    state = load_state(search)
    # Seeds other than the search's: the selected configuration was chosen for how it did with the
    # search seed, so re-running that seed would put the winner of the selection into the mean.
    points = repeat_points(study, parent.rows(), repeat_seeds(state.opts.seed, k))
    if not points:
        return Outcome(f"{study.key} repeats")
    name = f"{state.opts.name}-repeats"
    experiment = f"{state.opts.storage.rstrip('/')}/{name}"
    tags = {"lab": study.lab, "study": study.name, "kind": "repeats", "repeats_of": parent.parent_id,
            "tune_experiment": experiment}
    repeats = replace(state, spec=replace(state.spec, evaluate_test=True), opts=replace(state.opts, name=name),
                      run_name=f"{study.name} [repeats x{k}]", tags=tags,
                      params={"repeats": k, "configs": len(points) // k}, points=tuple(points))
    save_state(state.opts.storage, name, repeats)
    progress.repeats = experiment
    record.save()
    return _run_experiment(study, repeats, experiment, uri, callbacks, resuming=False, wait_for_nodes=wait_for_nodes)[0]


def _study(p: Planned, opts: RunOptions, record: Invocation, progress: Progress, *, ray_mode: str, gpus: float,
           callbacks: Sequence[Any]) -> Outcome:
    """The study's search, then (a test-once study) its test phase, then its --repeats: each started,
    or resumed where the record says it got to."""
    study, uri = p.study, opts.mlflow_uri
    tracker: MlflowTracker | None = None
    if (progress.tests or progress.repeats) and progress.searched is not None and progress.searched.ok:
        outcome = progress.searched  # only the test phase or the repeats are left
    else:
        if progress.experiment:
            state = load_state(progress.experiment)
            outcome, tracker = _run_experiment(study, state, progress.experiment, uri, callbacks, resuming=True,
                                               wait_for_nodes=opts.wait_for_nodes)
        else:
            outcome, tracker = _new_search(p, opts, record, progress, ray_mode=ray_mode, gpus=gpus,
                                           callbacks=callbacks)
        if outcome.interrupted or not (study.test_once or opts.repeats):
            return outcome
        progress.searched = outcome
        record.save()
    if study.test_once and progress.tested is None:
        tested = _tests(study, progress, tracker, record, uri, callbacks, opts.wait_for_nodes)
        outcome = outcome + tested
        if tested.interrupted or not opts.repeats:
            return outcome
        progress.tested = tested
        record.save()
    elif progress.tested is not None:
        outcome = outcome + progress.tested
    if progress.repeats:
        state = load_state(progress.repeats)
        repeats = _run_experiment(study, state, progress.repeats, uri, callbacks, resuming=True,
                                  wait_for_nodes=opts.wait_for_nodes)[0]
    else:
        search = tracker or _reopened(study, progress.experiment, uri)
        search.close()  # a reopened parent is FINISHED again; its rows stay readable
        repeats = _new_repeats(study, progress.experiment, search, opts.repeats, record, progress, uri, callbacks,
                               opts.wait_for_nodes)
    return outcome + repeats


# ------------------------------------------------------------------------------ test once
class _Untracked:
    """What CheckpointLedger's repair of a restored experiment reads of its tracker: the test phase's
    trials have no MLflow runs of their own (their numbers go onto the runs they test)."""

    def __init__(self) -> None:
        self.restored: dict[str, Any] = {}
        self.killed_before: dict[str, str] = {}


def _reopened(study: Study, search: str, uri: str) -> MlflowTracker:
    """A tracker on the search's parent run, as a later driver finds it (--resume): its finished
    children adopted. No comparison figure: the one the search drew from full histories stays."""
    state = load_state(search)
    parent = find_parent(uri, study.lab, search)
    if parent is None:
        raise RuntimeError(f"no MLflow parent run of {search} in experiment {study.lab}")
    return MlflowTracker(uri, experiment=study.lab, run_name="", tags={}, params={}, reopen=parent,
                         resolve=state.spec.resolve, metric=study.metric, mode=study.mode,
                         trial_figures=study.trial_figures)


def _point_key(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True, default=str)


def _tests(study: Study, progress: Progress, tracker: MlflowTracker | None, record: Invocation, uri: str,
           callbacks: Sequence[Any], wait_for_nodes: float | None) -> Outcome:
    """Test once (#16): the search never touched the test split; the selected configuration of each
    cell is trained again exactly as the search trained it (its sampled params, the search's seed)
    with the test split on, and its `test_*` numbers go onto the search trial's run. Training again
    rather than reloading: not every trainable checkpoints its model, and a re-run gives the same
    weights on CPU (the weights digest is compared and tagged; kernels on GPU may differ)."""
    search = tracker or _reopened(study, progress.experiment, uri)
    if not progress.tests:
        state = load_state(progress.experiment)
        chosen = selected(study, search.rows())
        if not chosen:  # no trial finished: nothing to test (the search's outcome says why)
            if tracker is None:
                search.close()
            return Outcome(f"{study.key} test")
        name = f"{state.opts.name}-test"
        tests = replace(state, spec=replace(state.spec, evaluate_test=True), opts=replace(state.opts, name=name),
                        points=tuple(dict(r["params"]) for r in chosen), targets=tuple(r["run_id"] for r in chosen))
        save_state(state.opts.storage, name, tests)
        progress.tests = f"{state.opts.storage.rstrip('/')}/{name}"
        record.save()
    outcome = _run_tests(study, progress.tests, search, callbacks, wait_for_nodes)
    if tracker is None:
        search.close()  # the reopened parent: summary and description again, FINISHED
    else:
        search.summarise()
    return outcome


def _run_tests(study: Study, experiment: str, search: MlflowTracker, callbacks: Sequence[Any],
               wait_for_nodes: float | None) -> Outcome:
    state, label = load_state(experiment), f"{study.key} test"
    points = list(state.points or ())
    restoring = _restorable(experiment)
    ledger = CheckpointLedger(_Untracked() if restoring else None, managed=not state.spec.uses_ray_train)
    guard = [placement.StallGuard(wait_for_nodes, search)] if wait_for_nodes else []
    tune_callbacks = [ledger, *guard, *callbacks]
    print(f"== {label}: the selected configuration of each of its {len(points)} cells, trained again with the "
          f"search's seed and evaluated on test{' (resuming)' if restoring else ''}; MLflow parent run "
          f"{search.parent_id}", flush=True)
    if restoring:
        tuner = tune.Tuner.restore(experiment, trainable=make_trainable(state.spec, state.opts), resume_errored=True)
        tuner._local_tuner.get_run_config().callbacks = tune_callbacks  # this process's, as in _run_experiment
    else:
        tuner = study_tuner(state.spec, state.opts, tune_callbacks, state.opts.name, num_samples=len(points),
                            search_alg=FixedPoints(points, study.metric, study.mode),
                            max_concurrent_trials=state.opts.max_concurrent)
    try:
        grid = list(tuner.fit())
    except KeyboardInterrupt:
        return Outcome(label, interrupted=True)
    tests = _test_results(grid, state, search)
    search.add_tests(tests)
    checked = [t.same_weights for t in tests.values() if t.same_weights is not None]
    if differ := checked.count(False):
        print(f"== {label}: {differ} of {len(checked)} re-trained models differ from the searched ones (tag "
              f"test_retrain_same_weights=false): their test numbers are of the re-trained models", flush=True)
    stopped = len(points) - len(grid) + sum(r.error is None and not (r.metrics or {}).get(FINAL_KEY) for r in grid)
    if stopped:  # Ctrl-C (Tune's graceful stop): --resume goes on with the test phase
        return Outcome(label, interrupted=True)
    print(f"== {label}: {len(tests)} of {len(points)} selected configurations tested", flush=True)
    outcome = _failures(label, grid, ledger, search)
    if outcome.failed:
        print(f"== {outcome.line()}", flush=True)
    return outcome


def _test_results(grid: Sequence[Any], state: StudyState, search: MlflowTracker) -> dict[str, Tested]:
    """Each finished test trial's result by the run id of the search trial it re-ran, with whether
    its weights digest equals that trial's (where both have one)."""
    by_point = {_point_key(p): run for p, run in zip(state.points or (), state.targets or ())}
    tests: dict[str, Tested] = {}
    for r in grid:
        m = r.metrics or {}
        run_id = by_point.get(_point_key(r.config or {}))
        if r.error is not None or not m.get(FINAL_KEY) or run_id is None:
            continue
        searched = search.client.get_run(run_id).data.tags.get("weights_digest")
        same = None
        if searched is not None and "weights_digest" in m:
            same = math.isclose(float(searched), float(m["weights_digest"]), rel_tol=1e-9, abs_tol=1e-12)
        tests[run_id] = Tested(dict(m), r.checkpoint, same)
    return tests


def run_planned(planned: list[Planned], opts: RunOptions, *, callbacks: Sequence[Any] = ()) -> int:
    """Runs the planned studies in turn (with `opts.resume`: goes on with that invocation), then
    writes the report. A study that fails does not stop the others. `callbacks`: extra Tune
    callbacks given to every study's tuner (e.g. a benchmark's stopwatch). Returns the exit code."""
    # Experiment state is saved after every result; with sub-second epochs Tune warns about it each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    keep_trial_errors_off_console()
    if opts.quiet:
        # Tune's default output engine prints every failed attempt of a trial (with a path in Ray's
        # temporary folder) whatever the verbosity; its legacy engine prints nothing at verbose=0.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    uri, lab = opts.mlflow_uri, planned[0].study.lab
    server = ensure_server(uri, opts.launch)
    outcomes: list[Outcome] = []
    try:
        ray_mode = connect_ray(opts.ray_address, worker_logs=not opts.quiet)
        # [cluster #13] each study's trial checked against the nodes up and those the autoscaler can add
        shapes = placement.prepare(planned, opts, ray_mode)
        if opts.resume is not None:
            record = invocation.load(opts.resume)
        else:
            record = invocation.create(opts.storage, lab, [(p.study.name, p.base, p.pins, p.run_keys) for p in planned],
                                       opts)
            record.save()
        for p in planned:
            progress = record.progress.setdefault(p.study.name, Progress())
            if progress.done is not None and progress.done.ok:
                print(f"== {p.study.key}: finished before, every trial; not run again", flush=True)
                outcomes.append(progress.done)
                continue
            placement.wait_for_nodes(shapes[p.study.key], opts.wait_for_nodes, p.study.key)  # [cluster #13]
            gpus = shapes[p.study.key].gpus
            try:
                outcome = _study(p, opts, record, progress, ray_mode=ray_mode, gpus=gpus, callbacks=callbacks)
            except Exception as e:  # one study's failure must not cost the others (KeyboardInterrupt passes)
                outcome = _crashed(p.study, e, record)
                print(f"== {outcome.line()}", flush=True)
            if outcome.interrupted:
                return EXIT_INTERRUPTED
            outcomes.append(outcome)
            progress.done = outcome
            record.save()
        from .report import build_report

        path = build_report(uri, lab, [p.study for p in planned], report_dir(opts.report_dir, lab))
        record.report = str(path)
        record.save()
    finally:
        stop_server(server)
    shown = default_uri(opts.launch) if server is not None else uri
    print(f"MLflow: {uri}  (open it with: mlflow ui --app-name {UI_APP} --backend-store-uri {shown})")
    print(f"report: {path}")
    unfinished = [o for o in outcomes if not o.ok]
    if unfinished:
        print(f"run.py: {len(unfinished)} of {len(outcomes)} studies did not finish every trial: "
              f"{', '.join(o.study for o in unfinished)}; `--resume` retries them", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
