"""The README's cluster commands, exactly, through Ray's real cluster launcher: `ray up` of
cluster-local.yaml (with the edit its header asks for) onto two SSH "machines" of this host (sshd on
127.0.0.1 and 127.0.0.2 with a throwaway key), `ray submit ... run.py lab1`, `ray job submit`
through a `ray dashboard` tunnel, `ray down`. All of it inside a private namespace
(tests/isolation.py), so it neither stops nor joins any other Ray on the machine; the machinery is
tests/launcher_cluster.py. The project comes from a git checkout of the working tree (a real commit
for the provenance check).

Needs unshare, sshd, ssh-keygen, rsync and git (.ci/run installs openssh-server and rsync); skipped,
with the reason, without them.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest

from tests.isolation import run_isolated, unavailable

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
GIT = ["git", "-c", "user.name=dla-test", "-c", "user.email=dla-test@example.com"]


def readme_cluster_commands() -> list[str]:
    """The commands of README's "On a cluster" block: continuation lines joined, comments dropped."""
    section = (REPO / "README.md").read_text().split("### On a cluster\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        text = line.split(" # ", 1)[0].rstrip() if " # " in line else line.rstrip()
        current = f"{current} {text.strip()}" if current else text.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current:
            commands.append(" ".join(current.split()))
        current = ""
    return commands


def checkout_of_the_working_tree(dest: Path) -> str:
    """The working tree's files (tracked and new, not ignored) as a fresh git repository; its commit."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    subprocess.run([*GIT, "-C", str(dest), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(dest), "commit", "-qm", "the working tree under test"], check=True)
    return subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, dict, str]:
    if (reason := unavailable("sshd", "ssh", "ssh-keygen", "rsync", "git")) is not None:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("launcher")
    (work / "shared").mkdir()
    commit = checkout_of_the_working_tree(work / "checkout")
    (work / "commands.json").write_text(json.dumps(readme_cluster_commands()))
    proc = run_isolated(f'cd "{REPO}" && "$DLA_PYTHON" -m tests.launcher_cluster "$DLA_WORK"', work, timeout_s=3300)
    assert proc.returncode == 0, (work / "isolated.log").read_text()[-4000:]
    return work, json.loads((work / "results.json").read_text()), commit


def test_the_readme_block_is_the_documented_sequence():
    commands = readme_cluster_commands()
    assert [c.split()[:2] for c in commands] == [
        ["export", "SHARED=/mnt/shared"], ["python", "-m"], ["ray", "up"], ["ray", "submit"], ["ray", "dashboard"],
        ["ray", "job"], ["kill", "%1"], ["ray", "down"]]
    assert ("ray submit cluster.yaml orchestrator/run.py lab1 -- --study residual-mlp --num-samples 2 "
            "--storage $SHARED/ray_results --mlflow-uri sqlite:///$SHARED/mlflow.db") in commands


def test_every_readme_command_succeeds(launched):
    _, results, _ = launched
    ran = results["commands"]
    assert [c["command"] for c in ran] == readme_cluster_commands()[1:]   # all but `export SHARED`
    for c in ran:
        assert c["rc"] == 0, f"{c['command']}\n{c['output']}"
    submit = Path(next(c for c in ran if c["command"].startswith("ray submit"))["log"]).read_text()
    assert "lab1/residual-mlp: best val_acc=" in submit
    # The head has no CPUs and the worker is set up only after `ray up` returns: run.py waits for it
    # (about 20 s here; tests/test_autoscaling.py checks the wait itself).
    if "waiting for nodes" in submit:
        assert "waiting for nodes for lab1/residual-mlp: a trial needs 1 CPU: up after" in submit


def test_runs_record_the_cluster_and_the_commit(launched):
    work, _, commit = launched
    mlflow.set_tracking_uri(f"sqlite:///{work / 'shared' / 'mlflow.db'}")
    df = mlflow.search_runs(experiment_names=["lab1"])
    parents, children = df[df["tags.mlflow.parentRunId"].isna()], df[df["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 2 and len(children) == 4  # ray submit, then ray job submit
    assert set(df.status) == {"FINISHED"} and children["metrics.test_acc"].notna().all()
    assert set(parents["tags.ray"]) == {"cluster"}
    assert set(parents["tags.git_commit"]) == {commit}      # read from the stamp: the nodes have no .git
    assert all(str(work / "shared" / "ray_results") in t for t in parents["tags.tune_experiment"])


def test_one_interpreter_on_the_head(launched):
    _, results, _ = launched
    # `python` on the head's login PATH is the venv that setup made and installed the project into.
    assert "INTERPRETER /tmp/home/dla-venv/bin/python /tmp/home/dla/orchestrator/__init__.py" in results["interpreter"]


def test_job_results_land_outside_rays_package_folder(launched):
    _, results, _ = launched
    job = next(c for c in results["commands"] if c["command"].startswith("ray job submit"))
    output = Path(job["log"]).read_text()
    assert "relative paths and the defaults (ray_results, mlflow.db, reports) go to /tmp/home/dla-runs" in output
    assert "report: /tmp/home/dla-runs/reports/" in output
    assert results["head_files"] == ["dla-runs/reports"]


def test_ray_down_leaves_no_ray_behind(launched):
    _, results, _ = launched
    assert results["ray_processes_left"] == ""
