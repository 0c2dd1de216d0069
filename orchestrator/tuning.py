"""Ray connection and the Tune study: OptunaSearch (TPE, seeded) over the study's define-by-run
space with every cell of the compared factors enqueued, ASHA within each cell where the study asks
for it, per-trial resources, a checkpoint per epoch."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from .execution import TrialSpec, run_trial
from .study import Study, cell_key


def _live_cluster_address() -> str | None:
    """The address of a cluster started with `ray start` on this machine (`ray up` does that on the
    head), if its GCS answers. Only `ray start` writes that address file, so the private Ray of
    another `run.py` on the same machine is never joined, and a stale file is ignored."""
    try:
        from ray._private.services import find_bootstrap_address

        address = find_bootstrap_address(None)
    except Exception:
        return None
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return address
    except (OSError, ValueError):
        return None


# Set for the processes Ray starts (the local raylet inherits them; a joined cluster gets them in the
# job's runtime env), unless the user set them.
WORKER_ENV = {
    # Ray Train V2's controller collects worker reports every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
    # default) and a worker blocks until its last report was collected, so a Train trial that reports
    # every epoch could train at most one epoch per 2 s (measured: 2.05 s per 0.43-s epoch; 0.42 s per
    # 0.40-s epoch at 0.1; benchmarks/README.md).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    # Ray starts its worker processes at nice 15 so that its daemons stay responsive. Here the workers
    # are the trials, the whole point of the run, and at nice 15 any ordinary process beside them takes
    # nearly all the CPU (nice 0 weighs 28x nice 15 in Linux's scheduler): measured on 2 cores beside two
    # busy loops, a 1-epoch ResNet-18 trial got 4% of a core and ran past 10 min instead of ~1. At 0
    # they share the machine fairly with other jobs and with Ray's daemons (also at 0).
    "RAY_worker_niceness": "0",
}


def worker_env() -> dict[str, str]:
    return {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}


def connect_ray(address: str | None = None, num_cpus: int | None = None,
                object_store_mb: int = 1024, worker_logs: bool = True) -> str:
    """Joins a running cluster (explicit address, RAY_ADDRESS, or one detected on this machine);
    otherwise, or with address "local", starts a private local Ray. Returns "cluster" or "local"
    (a tag of the parent run). `worker_logs`: the trial processes' output on this console (off with
    --quiet: it stays in Ray's session logs; Ray's own worker shutdown can print an "Exception ignored"
    traceback there when a reused trial process gets SIGTERM at the end of an experiment)."""
    if ray.is_initialized():  # tests and notebooks that started Ray themselves
        return "existing"
    # [cluster #13] "local" forces a private Ray: never RAY_ADDRESS or a `ray start` cluster here
    address = None if address == "local" else address or os.environ.get("RAY_ADDRESS") or _live_cluster_address()
    if address:  # the cluster's processes exist already: the job's runtime env carries the setting
        ray.init(address=address, log_to_driver=worker_logs, runtime_env={"env_vars": worker_env()})
        return "cluster"
    os.environ.update(worker_env())  # inherited by the local raylet and every worker it starts
    ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_mb * 2**20,
             log_to_driver=worker_logs)
    return "local"


class PinnedTrial:
    """Wraps an Optuna trial so that pinned parameters (`--set depth=8`) are not sampled: the space
    code runs unchanged (conditional branches see the pinned value) and the sampler never learns
    about a parameter that cannot vary."""

    def __init__(self, trial: Any, pins: Mapping[str, Any]) -> None:
        self._trial, self._pins = trial, pins
        self.used: dict[str, Any] = {}

    def _pinned(self, name: str, suggest: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if name in self._pins:
            self.used[name] = self._pins[name]
            return self._pins[name]
        return suggest(name, *args, **kwargs)

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._pinned(name, self._trial.suggest_float, *args, **kwargs)

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._pinned(name, self._trial.suggest_int, *args, **kwargs)

    def suggest_categorical(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._pinned(name, self._trial.suggest_categorical, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


@dataclass(frozen=True)
class PinnedSpace:
    """The study's space with pinned parameters; a class, not a closure, so that Tune can pickle
    the searcher into its experiment state (needed to resume)."""

    space: Callable[[Any], Any]
    pins: Mapping[str, Any]

    def __call__(self, trial: Any) -> dict[str, Any]:
        wrapped = PinnedTrial(trial, self.pins)
        constants = self.space(wrapped) or {}
        return {**constants, **wrapped.used}


@dataclass(frozen=True)
class TuneOptions:
    num_samples: int
    max_concurrent: int
    seed: int
    storage: str
    name: str
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    verbose: int = 1


def trial_resources(spec: TrialSpec, opts: TuneOptions) -> dict[str, float]:
    if spec.uses_ray_train:
        # The trial only drives TorchTrainer; its workers reserve their own CPUs/GPUs.
        return {"cpu": 0.25}
    return {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}


def make_trainable(spec: TrialSpec, opts: TuneOptions) -> Any:
    return tune.with_resources(tune.with_parameters(run_trial, spec=spec), trial_resources(spec, opts))


def tpe_sampler(seed: int, num_samples: int) -> optuna.samplers.TPESampler:
    """Seeded TPE whose random warm-up fits the study's budget: Optuna's default of 10 random
    trials would leave a quick 8-trial study pure random search; a third of the trials (3 to 10)
    are random, the rest guided."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, num_samples // 3)))


def cell_points(study: Study, pins: Mapping[str, Any], num_samples: int, profile: str | None = None
                ) -> list[dict[str, Any]]:
    """The trials the search starts with: the profile's cells in turn, round after round, up to
    num_samples (each fixes its compared factors; the sampler still chooses the nuisance
    parameters). Every trial is one of them, so a factor's value is always a cell's (pre-flight
    checks those). With fewer trials than cells the first cells get one each (the driver says so)."""
    cells = [c for c in study.cells_for(pins, profile) if c]
    return [dict(cells[i % len(cells)]) for i in range(num_samples)] if cells else []


class CellASHA(FIFOScheduler):
    """ASHA within each cell: one ASHAScheduler per combination of the compared factors, so a trial
    is only ever stopped for doing worse than trials of its own cell (a deep plain net learns
    slower than a shallow one: compared across cells, ASHA would stop the very cells the study is
    about). Only Tune's public scheduler interface is used."""

    def __init__(self, factors: tuple[str, ...], **asha: Any) -> None:
        super().__init__()
        self._factors, self._asha = factors, asha
        self._cells: dict[tuple[str, ...], ASHAScheduler] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._asha.update({k: v for k, v in (("metric", metric), ("mode", mode)) if v})
        return True

    def _of(self, trial: Any) -> ASHAScheduler:
        key = cell_key(trial.config, self._factors)
        if key not in self._cells:
            self._cells[key] = ASHAScheduler(**self._asha)
        return self._cells[key]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA within each of {len(self._cells)} cells"


def scheduler_for(study: Study, pins: Mapping[str, Any], epochs: int) -> TrialScheduler:
    if not study.early_stopping:
        return FIFOScheduler()
    asha = dict(time_attr="training_iteration", max_t=epochs, grace_period=min(study.grace_period, epochs),
                reduction_factor=2)
    factors = tuple(f for f in study.factors if f not in pins)
    return CellASHA(factors, **asha) if factors else ASHAScheduler(**asha)


def build_tuner(study: Study, spec: TrialSpec, opts: TuneOptions, callbacks: list[Any], epochs: int,
                profile: str | None = None) -> tune.Tuner:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(space=PinnedSpace(study.space, dict(spec.pins)), metric=study.metric, mode=study.mode,
                            sampler=tpe_sampler(opts.seed, opts.num_samples),
                            points_to_evaluate=cell_points(study, spec.pins, opts.num_samples, profile) or None)
    search = ConcurrencyLimiter(searcher, max_concurrent=opts.max_concurrent)
    scheduler = scheduler_for(study, spec.pins, epochs)
    return study_tuner(spec, opts, callbacks, opts.name, metric=study.metric, mode=study.mode, search_alg=search,
                       scheduler=scheduler, num_samples=opts.num_samples)


def study_tuner(spec: TrialSpec, opts: TuneOptions, callbacks: list[Any], name: str, **tune_config: Any
                ) -> tune.Tuner:
    """The Tuner of every study invocation (a search, or `--repeats`): a checkpoint per epoch (the
    last two kept), retries from it, and reused trial processes: a study's later trials run in an
    earlier trial's process (Tune resets it), so they skip the process start and its imports
    (0.06 s instead of ~3 s between trials; benchmarks/README.md)."""
    return tune.Tuner(
        make_trainable(spec, opts),
        tune_config=tune.TuneConfig(reuse_actors=True, **tune_config),
        run_config=tune.RunConfig(
            name=name, storage_path=opts.storage, callbacks=callbacks, verbose=opts.verbose,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        ),
    )
