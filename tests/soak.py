"""Flakiness soak: the end-to-end tests (`-m slow`) N runs in a row beside a CPU-bound job.

    .venv/bin/python tests/soak.py --runs 5                  # a busy loop on every core beside it
    .venv/bin/python tests/soak.py --runs 2 --burn 0         # when CI already runs beside it, or idle
    .venv/bin/python tests/soak.py --runs 3 --streams 2 --burn 0   # two halves, each the other's load
    .venv/bin/python tests/soak.py --summary                 # tally what is there

Why a script and not a test: one run takes most of an hour on a 2-core machine, so the check is
done by hand before a change to timing-sensitive code lands, not in CI. Each run leaves a JUnit
file named after the commit it tested (one per stream); the tally counts only runs of one commit
(the last one that changed the code), so runs from several sittings add up, and a change of code
starts the count again. The JUnit files in `soak/` are committed: sittings on other machines add up
too, and the count a note claims can be checked.

Idle runs (`--burn 0`, nothing beside them) count as much as loaded ones: load makes trials slow, but a
test that waits for a short-lived state (a checkpoint kept for two epochs) fails when they are fast.
test_fault_tolerance passed every loaded run and failed 2 of 4 idle ones, and official CI with it.
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
_CODE = [".", ":!README.md", ":!docs", ":!tests/soak.py", ":!.gitignore", ":!soak",
         ":!tests/test_soak.py"]


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, text=True, capture_output=True,
                              check=True).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *_CODE)
    return git("log", "-1", "--format=%h", "--", *_CODE) + ("-dirty" if dirty else "")


def _split(pytest_args: list[str], streams: int, out: Path) -> list[list[str]]:
    """The slow test files in `streams` shares of about equal time, timed by the newest JUnit
    files in `out`."""
    listed = subprocess.run([sys.executable, "-m", "pytest", "-m", "slow", "--collect-only", "-q",
                             "-p", "no:cacheprovider", *pytest_args], cwd=REPO, text=True,
                            capture_output=True).stdout
    files = sorted({line.split("::")[0] for line in listed.splitlines() if "::" in line})
    seconds: dict[str, float] = {}
    for xml in sorted(out.glob("*.xml"), key=lambda x: x.name.split(".")[1]):  # by stamp: newest wins
        per_file: dict[str, float] = defaultdict(float)
        for case in ET.parse(xml).iter("testcase"):
            per_file[case.get("classname", "").replace(".", "/") + ".py"] += float(case.get("time", 0))
        seconds.update(per_file)
    return balance(files, seconds, streams)


def balance(files: list[str], seconds: dict[str, float], streams: int) -> list[list[str]]:
    """Longest file first onto the share with the least time so far; a file never timed counts 60 s."""
    totals: list[float] = [0.0] * streams
    shares: list[list[str]] = [[] for _ in range(streams)]
    for file in sorted(files, key=lambda f: (-seconds.get(f, 60.0), f)):
        i = totals.index(min(totals))
        totals[i] += seconds.get(file, 60.0)
        shares[i].append(file)
    return [share for share in shares if share]


def _run_once(out: Path, commit: str, pytest_args: list[str], burn: int, streams: int) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    shares = _split(pytest_args, streams, out) if streams > 1 else [pytest_args]
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(burn)]
    for p in burners:
        p.start()
    started = time.monotonic()
    procs = []
    for i, share in enumerate(shares):
        tag = stamp if len(shares) == 1 else f"{stamp}-{i}"
        xml, basetemp = out / f"{commit}.{tag}.xml", out / f"tmp-{tag}"
        procs.append((xml, basetemp, subprocess.Popen(
            [sys.executable, "-m", "pytest", "-m", "slow", "-q", "-p", "no:cacheprovider",
             f"--basetemp={basetemp}", f"--junitxml={xml}", *share], cwd=REPO)))
    try:
        codes = [proc.wait() for _, _, proc in procs]
    finally:
        for p in burners:
            p.terminate()
    for (xml, basetemp, _), rc in zip(procs, codes):
        if rc == 0:  # a failed run keeps its folders (logs, results, mlflow.db) to read
            shutil.rmtree(basetemp, ignore_errors=True)
        print(f"soak: run {xml.stem} ({burn} burner(s), {len(shares)} stream(s)) rc={rc} in "
              f"{(time.monotonic() - started) / 60:.1f} min -> {xml}", flush=True)
    return max(codes)


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
    print(f"soak: {len(runs)} JUnit file(s) of {commit}; {len(tests)} tests; every test passed the last "
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
    ap.add_argument("--streams", type=int, default=1,
                    help="pytest processes side by side, each on a share of the slow test files: "
                         "each is the others' CPU-bound job (use with --burn 0)")
    ap.add_argument("--out", type=Path, default=REPO / "soak")
    ap.add_argument("--summary", action="store_true", help="only tally the runs already in --out")
    ap.add_argument("pytest_args", nargs="*",
                    help="after --: passed to pytest (e.g. a test file); with --streams, they choose "
                         "the tests, which are then shared out by file")
    opts = ap.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    commit = _commit()
    if not opts.summary:
        for _ in range(opts.runs):
            _run_once(opts.out, commit, opts.pytest_args, opts.burn, opts.streams)
    return summary(opts.out, commit)


if __name__ == "__main__":
    sys.exit(main())
