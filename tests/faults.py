"""Injected trial failures, for the tests of what a study with failing trials does (exit code 3, one
line, tracebacks in error files, the rest of the lab still running).

A trial of a study named in DLA_TEST_FAIL_STUDY (comma-separated study names) raises
`RuntimeError("injected failure ...")` as it starts, in every Ray worker where `install()` ran:
a `worker_process_setup_hook` of a test's own Ray, or tests/faults_site/sitecustomize.py for a
`run.py` subprocess (with that folder first on PYTHONPATH; a local Ray's workers inherit it).
The failure does not depend on any config value, so no validation added later can turn it into
bad input.
"""
from __future__ import annotations

import os

FAIL_ENV = "DLA_TEST_FAIL_STUDY"


def install() -> None:
    """Wraps orchestrator.execution.run_trial in this process. The driver pickles the trainable by
    reference (module + name), so a worker that ran this runs the wrapper."""
    import orchestrator.execution as execution

    if getattr(execution.run_trial, "injected", False):
        return
    original = execution.run_trial

    def run_trial(sampled, spec):
        if spec.study in os.environ.get(FAIL_ENV, "").split(","):
            raise RuntimeError(f"injected failure in {spec.lab}/{spec.study}")
        return original(sampled, spec)

    run_trial.injected = True
    execution.run_trial = run_trial
