"""What a run says when not everything went well, end to end through `run.py`:

- a study whose trials fail ends with one line (k of N, the first error, its error file), its
  tracebacks go to the error files and the trials' MLflow runs (not the console), the lab's other
  studies still run, the report is written with the failure in it, the exit code is 3; and
  `--resume` retries exactly the failed trials;
- `run.py LAB --resume` goes on with the study a killed driver was in, then runs the studies that
  never started, `--repeats` included, each invocation once.

Trials fail by injection (tests/faults.py): a trial of a study named in DLA_TEST_FAIL_STUDY raises
as it starts, whatever its config.
"""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import LOCAL_RAY, mlflow_uri, runs
from tests.drivers import ATTEMPTS, ray_did_not_start, run_to_end
from tests.faults import FAIL_ENV

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run_py(tmp_path: Path, log: str, *args: str, fail: str = "") -> subprocess.Popen:
    env = {**os.environ, FAIL_ENV: fail, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faults_site"), str(REPO)])}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, str(REPO / "orchestrator" / "run.py"), "lab1", "--quiet",
                             "--mlflow-uri", mlflow_uri(tmp_path), "--storage", str(tmp_path / "ray_results"),
                             "--report-dir", str(tmp_path / "report"), *LOCAL_RAY, *args],
                            cwd=tmp_path, env=env, stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT, text=True)


def _finish(tmp_path: Path, log: str, *args: str, fail: str = "") -> int:
    """run.py to its end (started again if its Ray did not come up: tests/drivers.py)."""
    return run_to_end(lambda: _run_py(tmp_path, log, *args, fail=fail), tmp_path / log)


def test_a_failing_study_is_one_line_exit_3_and_the_rest_of_the_lab_runs(tmp_path):
    study = ["--study", "residual-mlp", "--study", "mlp-capacity", "--num-samples", "2", "--max-concurrent", "2",
             "--set", "epochs=2"]
    rc = _finish(tmp_path, "first.log", *study, fail="residual-mlp")
    out = (tmp_path / "first.log").read_text()
    assert rc == 3, out[-4000:]
    assert "Traceback" not in out and "Trial task failed" not in out, out[-4000:]
    line = re.findall(r"^== lab1/residual-mlp: 2 of 2 trials failed \(first error: (.*); details: (.*)\)$", out, re.M)
    assert len(line) == 1, out[-4000:]
    error, details = line[0]
    assert error == "RuntimeError: injected failure in lab1/residual-mlp"
    traceback = Path(details).read_text()
    assert "injected failure" in traceback and 'File "' in traceback and "tests/faults.py" in traceback
    assert out.strip().splitlines()[-1] == ("run.py: 1 of 2 studies did not finish every trial: lab1/residual-mlp; "
                                            "`--resume` retries them")

    df = runs(tmp_path, "lab1")
    children = df[df["tags.mlflow.parentRunId"].notna()]
    failed = children[children["tags.study"] == "residual-mlp"]
    assert len(failed) == 2 and set(failed.status) == {"FAILED"}
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in failed.run_id:  # each traceback also in its trial's run
        assert [a.path for a in client.list_artifacts(run_id, "errors")] == ["errors/error.txt"]
    others = children[children["tags.study"] == "mlp-capacity"]
    assert len(others) == 2 and set(others.status) == {"FINISHED"}   # the next study still ran
    report = (tmp_path / "report" / "report.md").read_text()
    failing = report.split("## lab1/residual-mlp")[1].split("## ")[0]
    assert "2 trials — 2 failed" in failing and "## lab1/mlp-capacity" in report

    # Fixed (no more injected failure), --resume retries the failed trials and nothing else.
    rc = _finish(tmp_path, "resumed.log", "--resume")
    out = (tmp_path / "resumed.log").read_text()
    assert rc == 0, out[-4000:]
    assert "lab1/mlp-capacity: finished before, every trial; not run again" in out
    df = runs(tmp_path, "lab1")
    children = df[df["tags.mlflow.parentRunId"].notna()]
    retried = children[(children["tags.study"] == "residual-mlp") & (children.status == "FINISHED")]
    assert len(retried) == 2 and set(retried["tags.trial_id"]) == set(failed["tags.trial_id"])
    assert len(children[children["tags.study"] == "mlp-capacity"]) == 2
    assert len(df[df["tags.mlflow.parentRunId"].isna()]) == 2 and "RUNNING" not in set(df.status)


def _count(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


FINISHED_SEARCH_TRIALS = ("SELECT COUNT(*) FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid JOIN tags s "
                          "ON r.run_uuid = s.run_uuid WHERE t.key = 'mlflow.parentRunId' AND s.key = 'study' "
                          "AND s.value = 'mlp-capacity' AND r.status = 'FINISHED'")
RUNNING_REPEATS = ("SELECT COUNT(*) FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid WHERE t.key = 'mlflow.parentRunId'"
                   " AND r.status = 'RUNNING' AND t.value IN (SELECT run_uuid FROM tags WHERE key = 'kind' AND "
                   "value = 'repeats')")


def _kill_when(tmp_path: Path, log: str, args: tuple[str, ...], db: Path, sql: str) -> None:
    """Starts run.py ARGS and SIGKILLs it once `sql` counts a row (started again if its Ray did not
    come up: tests/drivers.py)."""
    for _ in range(ATTEMPTS):
        proc = _run_py(tmp_path, log, *args)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and proc.poll() is None and _count(db, sql) < 1:
                time.sleep(0.5)
            if ray_did_not_start(proc, tmp_path / log):
                continue
            assert proc.poll() is None and _count(db, sql) >= 1, (tmp_path / log).read_text()[-3000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return
        finally:
            proc.kill()
    raise AssertionError(f"Ray did not start in {ATTEMPTS} attempts: " + (tmp_path / log).read_text()[-3000:])


def _explain(tmp_path: Path, study: str, children) -> str:
    """What a failed count needs to be understood: each child's status and how it ended, the drivers' lines."""
    cols = [c for c in ("run_id", "status", "tags.status", "tags.trial_id", "tags.killed_by", "tags.resumed_from")
            if c in children]
    logs = "\n".join(f"--- {name}\n" + "\n".join(x for x in (tmp_path / name).read_text().splitlines()
                                                 if x.startswith("==") or "rror" in x)[-2500:]
                     for name in ("first.log", "second.log", "last.log") if (tmp_path / name).exists())
    return f"{study}:\n{children[cols].to_string()}\n{logs}"


def test_lab_resume_goes_on_with_the_study_then_those_that_never_started_repeats_included(tmp_path):
    db = tmp_path / "mlflow.db"
    lab = ("--study", "mlp-capacity", "--study", "residual-mlp", "--num-samples", "2", "--max-concurrent", "2",
           "--repeats", "1", "--set", "epochs=4", "batch_size=16")
    _kill_when(tmp_path, "first.log", lab, db, FINISHED_SEARCH_TRIALS)        # in the first study's search
    _kill_when(tmp_path, "second.log", ("--resume",), db, RUNNING_REPEATS)    # in a study's --repeats
    rc = _finish(tmp_path, "last.log", "--resume")
    assert rc == 0, (tmp_path / "last.log").read_text()[-4000:]

    df = runs(tmp_path, "lab1")
    assert "RUNNING" not in set(df.status)
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    children = df[df["tags.mlflow.parentRunId"].notna()]
    for study in ("mlp-capacity", "residual-mlp"):
        mine = parents[parents["tags.study"] == study]
        search = mine[mine["tags.kind"].isna()]
        repeats = mine[mine["tags.kind"] == "repeats"]
        assert len(search) == 1 and len(repeats) == 1, (study, mine[["run_id", "tags.kind", "status"]])
        assert set(mine.status) == {"FINISHED"}
        for parent, expected in ((search, 2), (repeats, int(repeats["params.configs"].iloc[0]))):
            mine_children = children[children["tags.mlflow.parentRunId"] == parent.run_id.iloc[0]]
            done = mine_children[mine_children.status == "FINISHED"]
            assert len(done) == expected and done["tags.trial_id"].is_unique, _explain(tmp_path, study, mine_children)
        assert repeats["tags.repeats_of"].iloc[0] == search.run_id.iloc[0]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## lab1/mlp-capacity" in report and "## lab1/residual-mlp" in report and "mean ± std" in report


def test_a_driver_killed_in_the_test_phase_resumes_it_and_tests_each_cell_once(tmp_path):
    """Test once (#16) across a kill: SIGKILLed once a test trial has written a checkpoint, the
    driver's --resume goes on with the test phase (not the search), and each cell's selected trial
    ends with one test number, on its own run."""
    from tests.conftest import assert_tested_once

    study = ("--study", "mlp-capacity", "--num-samples", "3", "--max-concurrent", "1", "--set", "epochs=6",
             "batch_size=16")
    storage = tmp_path / "ray_results"
    for _ in range(ATTEMPTS):
        proc = _run_py(tmp_path, "first.log", *study)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and proc.poll() is None and not list(
                    storage.glob("*-test/run_trial_*/checkpoint_*")):
                time.sleep(0.2)
            if ray_did_not_start(proc, tmp_path / "first.log"):
                continue
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            break
        finally:
            proc.kill()
    rc = _finish(tmp_path, "last.log", "--resume")
    out = (tmp_path / "last.log").read_text()
    assert rc == 0, out[-4000:]
    assert "lab1/mlp-capacity test: the selected configuration of each of its 3 cells" in out and "(resuming)" in out
    assert "lab1/mlp-capacity (quick): 3 trials" not in out  # the search was not run again
    df = runs(tmp_path, "lab1")
    assert set(df.status) == {"FINISHED"}
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 3
    assert_tested_once(children, ["width"])
    client = mlflow.MlflowClient(mlflow_uri(tmp_path))
    for run_id in children[children["tags.tested"] == "true"].run_id:
        assert len(client.get_metric_history(run_id, "test_acc")) == 1
    parent = df[df["tags.mlflow.parentRunId"].isna()].iloc[0]
    best = children[children.run_id == parent["tags.best_run_id"]].iloc[0]
    assert parent["metrics.best_trial_test_acc"] == best["metrics.test_acc"]
