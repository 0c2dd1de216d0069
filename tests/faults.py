"""Injected trial failures, for the tests of what a study with failing trials does (exit code 3, one
line, tracebacks in error files, the rest of the lab still running).

A trial of a study named in DLA_TEST_FAIL_STUDY (comma-separated study names) raises
`RuntimeError("injected failure ...")` as it starts, in every Ray worker where `install()` ran:
a `worker_process_setup_hook` of a test's own Ray, or tests/faults_site/sitecustomize.py for a
`run.py` subprocess (with that folder first on PYTHONPATH; a local Ray's workers inherit it).
The failure does not depend on any config value, so no validation added later can turn it into
bad input.

DLA_TEST_EPOCH_PACE (seconds) paces trials instead: every report of a single-device trial waits that
long first, so that an epoch lasts at least that long on any machine. Tests whose faults strike at
moments in time (tests/test_chaos.py) need trials that outlast the faults on a fast machine too.
"""
from __future__ import annotations

import os
import time

FAIL_ENV = "DLA_TEST_FAIL_STUDY"
PACE_ENV = "DLA_TEST_EPOCH_PACE"


def install() -> None:
    """Wraps orchestrator.execution.run_trial in this process. The driver pickles the trainable by
    reference (module + name), so a worker that ran this runs the wrapper."""
    import orchestrator.execution as execution

    if getattr(execution.run_trial, "injected", False):
        return
    pace = float(os.environ.get(PACE_ENV) or 0)
    if pace > 0:
        report = execution.TuneContext.report

        def paced_report(self, *args, **kwargs):
            time.sleep(pace)
            return report(self, *args, **kwargs)

        execution.TuneContext.report = paced_report
    original = execution.run_trial

    def run_trial(sampled, spec):
        if spec.study in os.environ.get(FAIL_ENV, "").split(","):
            raise RuntimeError(f"injected failure in {spec.lab}/{spec.study}")
        return original(sampled, spec)

    run_trial.injected = True
    execution.run_trial = run_trial
