"""Where a run's code came from: recorded on every study's parent run (tag `git_commit`)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(repo: Path) -> str:
    """The commit checked out in `repo`, or "unknown" (no git, not a repository, a shipped copy
    without `.git` as under `ray job submit`)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
