"""What the CLI hands the session: the planned studies and one frozen record of every run option,
built once from the command line (orchestrator.cli) and read everywhere below it (nothing below
cli.py sees argparse). Also the two defaults both sides resolve: the tracking URI and the report folder.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .study import Study

REPO = Path(__file__).resolve().parents[1]


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


# The exit codes of `run.py LAB ...` (README, "Exit codes").
EXIT_OK = 0            # every trial of every study finished
EXIT_USAGE = 2         # bad input: nothing ran, nothing was written
EXIT_FAILED = 3        # some trials (or a whole study) did not finish; the other studies ran, the report is written
EXIT_INTERRUPTED = 130  # Ctrl-C: every open run ended KILLED; `--resume` continues


@dataclass(frozen=True)
class Planned:
    study: Study
    base: dict[str, Any]   # profile values + --set values (validated)
    pins: dict[str, Any]   # --set values of config fields (typed)
    run_keys: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """One `run.py LAB ...` invocation, resolved: paths absolute, defaults filled in."""

    profile: str                          # "quick" | "full"
    num_samples: int | None               # trials per study; None: each study's default for the profile
    max_concurrent: int                   # trials running at once
    cpus_per_trial: float                 # CPUs per trial, or per Ray Train worker
    gpus_per_trial: float | None          # GPUs per trial or worker; None: the study's packing if the cluster has GPUs
    workers_per_trial: int                # Ray Train workers per trial (> 1: DDP under TorchTrainer)
    mlflow_uri: str                       # tracking store or server
    storage: str                          # Tune/Train results: an absolute folder or a URI every node sees
    data_dir: Path                        # datasets of the full profile (absolute)
    launch: Path                          # the folder run.py was started in
    seed: int                             # seeds the TPE sampler and every trial
    ray_address: str | None               # cluster to join; None: RAY_ADDRESS, a cluster here, else local
    offline: bool                         # never download
    max_failures: int                     # retries of a failed trial from its checkpoint; -1: unlimited
    repeats: int                          # K seeds per best configuration after the search; 0: none
    report_dir: Path | None               # --report-dir; None: reports/LAB-TIMESTAMP when the report is written
    resume: str | None = None             # the invocation record to continue (--resume, orchestrator.invocation)
    quiet: bool                           # no Tune progress table
    wait_for_nodes: float = 900.0         # seconds a trial may wait for nodes before the study ends


def tracking_uri(arg: str | None, launch: Path) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else MLflow's default store in the launch folder."""
    from .tracking import default_uri

    return arg or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(launch)


def report_dir(arg: Path | None, lab: str) -> Path:
    return (arg or Path("reports") / f"{lab}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
