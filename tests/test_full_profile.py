"""Every full-profile study of every lab end to end, offline, on the fixtures of tests/fixture_data.py (every
dataset and model the full profile reads, in its real on-disk format, a few images each):

    run.py LAB --profile full --offline --data-dir FIXTURES --num-samples 1 --set epochs=1 ...

one run.py process per lab (all of its studies in turn: transfer and cam start from the CNN the lab's
architecture studies just trained), logged to MLflow, its report rendered.

The md5 bypass. The fixture CIFAR/SVHN files cannot have the real files' md5, which torchvision checks
when it opens them. run.py runs with tests/md5_bypass on PYTHONPATH and DLA_TEST_SKIP_MD5=1: its
sitecustomize installs tests.fixture_data's bypass (only that check: the files must still be there) in
every Python process at start-up, the driver (pre-flight opens the files) and the Ray workers, which a
local Ray starts with the driver's environment. A trial without it would fail loading CIFAR-10: every
trial finishing on CIFAR is the proof it reached them; without DLA_TEST_SKIP_MD5 the same command is
refused before Ray starts.
The fixtures: conftest.full_fixtures.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BYPASS = REPO / "tests" / "md5_bypass"

# How each lab is shrunk: lab1 and lab3 with a budget on the command line (whole-lab keys: each study that
# has the setting takes it), lab4 with --smoke (2 trials of 1 epoch, a few images, few attack steps: the
# smoke run's own end-to-end test). The fixture splits are a few dozen images: only per-image loops matter.
CASES = {
    "lab1": (["--num-samples", "1", "--set", "epochs=1"], 1),
    "lab3": (["--num-samples", "1", "--set", "epochs=1", "max_eval=16", "max_train=64"], 1),
    "lab4": (["--smoke"], 2),
}


def run_py(tmp: Path, *args: str, bypass: bool = True, timeout: int = 1500) -> subprocess.CompletedProcess:
    """`run.py ARGS` in a subprocess in tmp: a private local Ray, MLflow, storage and report in tmp,
    offline, the md5 bypass in every process it starts (unless bypass=False)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DLA_TEST_SKIP_MD5")}
    env["PYTHONPATH"] = os.pathsep.join([str(BYPASS), str(REPO)])
    if bypass:
        env["DLA_TEST_SKIP_MD5"] = "1"
    cmd = [sys.executable, str(REPO / "orchestrator" / "run.py"), *args, "--offline", "--quiet", "--ray-address", "local",
           "--mlflow-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--storage", str(tmp / "ray_results"),
           "--report-dir", str(tmp / "report")]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("lab", list(CASES))
def test_every_full_study_of_the_lab_runs_logs_and_reports(lab, full_fixtures, tmp_path):
    import mlflow

    from orchestrator.studies import studies_of

    args, trials = CASES[lab]
    done = run_py(tmp_path, lab, "--profile", "full", "--data-dir", str(full_fixtures), *args)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    df = mlflow.search_runs(experiment_names=[lab])
    report = (tmp_path / "report" / "report.md").read_text()
    for study in studies_of(lab):
        runs = df[df["tags.study"] == study.name]
        parents, children = runs[runs["tags.mlflow.parentRunId"].isna()], runs[runs["tags.mlflow.parentRunId"].notna()]
        assert len(parents) == 1 and parents["tags.profile"].iloc[0] == "full", study.key
        assert len(children) == trials and set(children.status) == {"FINISHED"}, study.key
        assert children[f"metrics.{study.metric}"].notna().all() or \
            children[f"metrics.best_{study.metric}"].notna().all(), study.key
        section = report[report.index(f"## {study.key}:"):]
        assert "full profile" in section.split("\n## ")[0] and "Not run yet." not in section.split("\n## ")[0]
        if study.references:
            assert study.references in report
    children = df[df["tags.mlflow.parentRunId"].notna()]
    if lab == "lab4":  # the full profile's model, never the space's mlp/cnn (Profile.pinned)
        assert set(children["params.model"]) == {"resnet18"}
    if lab == "lab1":  # transfer and cam used the CNN just trained on the CIFAR-10 fixture
        assert set(children[children["tags.study"].isin(["transfer", "cam"])]["params.source_run"]) <= \
            set(children.run_id)
    assert (tmp_path / "report" / "report.html").is_file()
    if "--smoke" in args:  # its summary: one line per study, in order, then the verdict
        lines = done.stdout.splitlines()
        start = lines.index(next(x for x in lines if x.startswith("smoke summary (full profile")))
        summary = lines[start + 1:start + 1 + len(studies_of(lab))]
        assert [x.split()[:2] for x in summary] == [["ok", s.key] for s in studies_of(lab)]
        assert all("data, model, loop, logging, report: 2 trials" in x for x in summary)
        assert lines[start + 1 + len(summary)].startswith("smoke: every study worked")


@pytest.mark.slow
def test_without_the_bypass_the_fixtures_are_refused_before_ray(full_fixtures, tmp_path):
    """Only the md5 is bypassed: without it the fixture CIFAR-10 is not CIFAR-10, and pre-flight says so."""
    done = run_py(tmp_path, "lab1", "--study", "resnet", "--profile", "full", "--data-dir", str(full_fixtures),
                  bypass=False, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"run.py: error: lab1/resnet needs cifar10 (dataset=cifar10), not found in {full_fixtures} (--offline); "
        f"fetch it where there is network: run.py prefetch lab1 --data-dir {full_fixtures}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_bypass_reaches_the_ray_workers_a_run_py_starts(full_fixtures, tmp_path):
    """Directly, what the trials above rely on: a worker process of a local Ray started by a driver with
    run_py's environment opens the fixture CIFAR-10 (its md5 unchecked), the driver too."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(PYTHONPATH=os.pathsep.join([str(BYPASS), str(REPO)]), DLA_TEST_SKIP_MD5="1")
    code = ("import os, sys, ray\n"
            "from pathlib import Path\n"
            "from trainables.data import has_dataset\n"
            "ray.init(address='local', num_cpus=1, object_store_memory=100 * 2**20, log_to_driver=False)\n"
            "probe = ray.remote(lambda d: (has_dataset('cifar10', Path(d)), os.getpid()))\n"
            "found, pid = ray.get(probe.remote(sys.argv[1]))\n"
            "print(found, pid != os.getpid(), has_dataset('cifar10', Path(sys.argv[1])))\n"
            "ray.shutdown()\n")
    done = subprocess.run([sys.executable, "-c", code, str(full_fixtures)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["True", "True", "True"]
