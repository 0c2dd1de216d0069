"""Which code a study ran: the git commit of the checkout, also on a cluster node that has no `.git`.

    python -m orchestrator.provenance      # before `ray up`, `ray rsync-up` or `ray job submit --working-dir .`

`ray up` copies the project to the nodes without `.git` (cluster.yaml's rsync_exclude; a git
worktree's `.git` is only a pointer file anyway) and `ray job submit` never packages it. So the
commit is written beside the code, in `orchestrator/_commit.json`, with a digest of every tracked
source file; a node reads it back and checks the digest against the files it really has. The file
is listed in the clone's `.git/info/exclude` (not in `.gitignore`: Ray's job packaging skips
whatever `.gitignore` names), so `git status` stays clean.

`git_commit(repo)` answers, in order: the checkout's own git, the stamp (`COMMIT`, or `COMMIT-dirty`
when the tree differed from the commit at stamp time or differs from the stamp now), `unknown`.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAMP = "orchestrator/_commit.json"
SOURCES = ("orchestrator", "trainables", "search_spaces", "pyproject.toml")  # what the nodes run


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _own_checkout(repo: Path) -> bool:
    """True when `repo` is the top of a git checkout (not merely a folder inside someone else's)."""
    top = _git(repo, "rev-parse", "--show-toplevel")
    return top is not None and Path(top).resolve() == repo.resolve()


def digest(repo: Path, files: list[str]) -> str:
    """sha256 over the files' names and bytes; a missing file counts as different content."""
    h = hashlib.sha256()
    for name in sorted(files):
        path = repo / name
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


def _tracked_sources(repo: Path) -> list[str]:
    listed = _git(repo, "ls-files", "-z", "--", *SOURCES)
    return [f for f in (listed or "").split("\0") if f and f != STAMP]


def _from_git(repo: Path) -> str | None:
    if not _own_checkout(repo):
        return None
    commit = _git(repo, "rev-parse", "HEAD")
    if not commit:
        return None
    changed = _git(repo, "status", "--porcelain", "--untracked-files=no", "--", *SOURCES)
    return f"{commit}-dirty" if changed else commit


def write_stamp(repo: Path = REPO) -> dict[str, object]:
    """Writes `orchestrator/_commit.json` for the checkout at `repo`; raises if it is no git checkout."""
    commit = _from_git(repo)
    if commit is None:
        raise RuntimeError(f"{repo} is not a git checkout: nothing to stamp")
    files = _tracked_sources(repo)
    stamp = {"commit": commit, "files": files, "digest": digest(repo, files)}
    (repo / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    exclude = _git(repo, "rev-parse", "--git-path", "info/exclude")
    if exclude:
        path = Path(exclude) if Path(exclude).is_absolute() else repo / exclude
        lines = path.read_text().splitlines() if path.exists() else []
        if f"/{STAMP}" not in lines:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join([*lines, f"/{STAMP}"]) + "\n")
    return stamp


def read_stamp(repo: Path = REPO) -> str | None:
    """The stamped commit, `-dirty` when the files here are not the ones stamped; None without a stamp."""
    try:
        stamp = json.loads((repo / STAMP).read_text())
        commit, files, expected = str(stamp["commit"]), list(stamp["files"]), str(stamp["digest"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if digest(repo, files) != expected and not commit.endswith("-dirty"):
        commit += "-dirty"
    return commit


def git_commit(repo: Path = REPO) -> str:
    return _from_git(repo) or read_stamp(repo) or "unknown"


if __name__ == "__main__":
    try:
        written = write_stamp()
    except RuntimeError as e:
        print(f"provenance: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{STAMP}: {written['commit']} ({len(written['files'])} files)")
