"""The commit a run records: from git in a checkout, from the stamp in a copy without `.git` (what
`ray up` and `ray job submit` put on the nodes), `-dirty` when the files are not the commit's."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator import provenance

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    (repo / "orchestrator").mkdir(parents=True)
    (repo / "orchestrator" / "run.py").write_text("print('hi')\n")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-qm", "init"], check=True)
    return repo


def _head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_a_checkout_reports_its_commit_and_local_changes(checkout):
    assert provenance.git_commit(checkout) == _head(checkout)
    (checkout / "orchestrator" / "run.py").write_text("print('changed')\n")
    assert provenance.git_commit(checkout) == _head(checkout) + "-dirty"


def test_a_copy_without_git_reads_the_stamp(checkout, tmp_path):
    stamp = provenance.write_stamp(checkout)
    assert stamp["commit"] == _head(checkout) and stamp["files"] == ["orchestrator/run.py", "pyproject.toml"]
    # The stamp is ignored by this clone only: `git status` stays clean, and no .gitignore hides it from Ray.
    assert subprocess.run(["git", "-C", str(checkout), "status", "--porcelain"], capture_output=True,
                          text=True).stdout == ""
    assert "/orchestrator/_commit.json" in (checkout / ".git" / "info" / "exclude").read_text()
    node = tmp_path / "node" / "dla"  # what rsync (rsync_exclude .git) leaves on a node
    shutil.copytree(checkout, node, ignore=shutil.ignore_patterns(".git"))
    assert provenance.git_commit(node) == _head(checkout)
    (node / "pyproject.toml").write_text("[project]\nname = 'edited on the node'\n")
    assert provenance.git_commit(node) == _head(checkout) + "-dirty"


def test_no_git_and_no_stamp_is_unknown_and_a_parent_repo_is_not_ours(checkout):
    inner = checkout / "orchestrator"  # inside a checkout, but not the top of one
    assert provenance.git_commit(inner) == "unknown"
    with pytest.raises(RuntimeError, match="not a git checkout"):
        provenance.write_stamp(inner)
