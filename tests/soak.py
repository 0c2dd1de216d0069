"""Flakiness soak: the end-to-end tests (`-m slow`) N runs in a row beside a CPU-bound job.

    .venv/bin/python tests/soak.py --runs 5 --out /tmp/soak            # burner on every core
    .venv/bin/python tests/soak.py --runs 2 --burn 0 --out /tmp/soak   # when CI already runs beside it
    .venv/bin/python tests/soak.py --summary --out /tmp/soak           # tally what is there

Why a script and not a test: one run takes most of an hour on a 2-core machine, so the check is
done by hand before a change to timing-sensitive code lands, not in CI. Each run leaves a JUnit
file named after the commit it tested; the tally counts only runs of one commit (the last one that
changed the code), so runs from several sittings add up, and a change of code starts the count again.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _burn() -> None:  # pragma: no cover - runs in a child process until terminated
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2**31


# What the tally is keyed on: the last commit that changed anything the tests run (a change of the
# README or of this script keeps the count going).
_CODE = [".", ":!README.md", ":!docs", ":!tests/soak.py", ":!.gitignore"]


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, text=True, capture_output=True,
                              check=True).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *_CODE)
    return git("log", "-1", "--format=%h", "--", *_CODE) + ("-dirty" if dirty else "")


def _run_once(out: Path, commit: str, pytest_args: list[str], burn: int) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    xml = out / f"{commit}.{stamp}.xml"
    basetemp = out / f"tmp-{stamp}"
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(burn)]
    for p in burners:
        p.start()
    started = time.monotonic()
    try:
        rc = subprocess.call([sys.executable, "-m", "pytest", "-m", "slow", "-q", "-p", "no:cacheprovider",
                              f"--basetemp={basetemp}", f"--junitxml={xml}", *pytest_args],
                             cwd=REPO)
    finally:
        for p in burners:
            p.terminate()
    if rc == 0:  # a failed run keeps its folders (logs, results, mlflow.db) to read
        shutil.rmtree(basetemp, ignore_errors=True)
    print(f"soak: run at {stamp} ({commit}, {burn} burner(s)) rc={rc} in "
          f"{(time.monotonic() - started) / 60:.1f} min -> {xml}", flush=True)
    return rc


def _outcomes(xml: Path) -> dict[str, str]:
    """Test id -> passed / failed / skipped for one JUnit file."""
    result = {}
    for case in ET.parse(xml).iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        tags = {child.tag for child in case}
        result[test] = ("failed" if tags & {"failure", "error"} else
                        "skipped" if "skipped" in tags else "passed")
    return result


def summary(out: Path, commit: str) -> int:
    """Per test: the runs it passed in a row (newest first), over this commit's runs."""
    runs = sorted(out.glob(f"{commit}.*.xml"))
    if not runs:
        print(f"soak: no runs of {commit} in {out}")
        return 1
    streak: dict[str, int] = defaultdict(int)
    broken: set[str] = set()
    failed: dict[str, int] = defaultdict(int)
    for xml in reversed(runs):
        for test, outcome in _outcomes(xml).items():
            failed[test] += outcome == "failed"
            if outcome == "passed" and test not in broken:
                streak[test] += 1
            elif outcome != "skipped":
                broken.add(test)
    ran = {t for xml in runs for t, outcome in _outcomes(xml).items() if outcome != "skipped"}
    skipped = sorted(set(failed) - ran)
    tests = sorted(ran)
    fewest = min((streak[t] for t in tests), default=0)
    print(f"soak: {len(runs)} run(s) of {commit}; {len(tests)} tests; every test passed the last "
          f"{fewest} run(s) in a row")
    for test in tests:
        if failed[test] or streak[test] == fewest:
            print(f"  {streak[test]} in a row, {failed[test]} failed: {test}")
    for test in skipped:
        print(f"  skipped in every run: {test}")
    return 0 if all(failed[t] == 0 for t in tests) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--burn", type=int, default=os.cpu_count() or 1,
                    help="CPU-bound processes beside the tests (default: one per core)")
    ap.add_argument("--out", type=Path, default=REPO / "soak")
    ap.add_argument("--summary", action="store_true", help="only tally the runs already in --out")
    ap.add_argument("pytest_args", nargs="*", help="after --: passed to pytest (e.g. a test file)")
    opts = ap.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    commit = _commit()
    if not opts.summary:
        for _ in range(opts.runs):
            _run_once(opts.out, commit, opts.pytest_args, opts.burn)
    return summary(opts.out, commit)


if __name__ == "__main__":
    sys.exit(main())
