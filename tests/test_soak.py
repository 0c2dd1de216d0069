"""The flakiness soak's bookkeeping (tests/soak.py): how it shares files out and tallies streaks."""
from __future__ import annotations

from pathlib import Path

from tests import soak


def _junit(path: Path, outcomes: dict[str, str]) -> None:
    cases = []
    for test, outcome in outcomes.items():
        module, name = test.split("::")
        inner = {"passed": "", "failed": "<failure message='x'/>", "skipped": "<skipped/>"}[outcome]
        cases.append(f"<testcase classname='{module}' name='{name}' time='1.0'>{inner}</testcase>")
    path.write_text(f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>")


def test_balance_puts_the_longest_files_on_the_lightest_share():
    seconds = {"a.py": 100.0, "b.py": 60.0, "c.py": 50.0, "d.py": 10.0}
    assert soak.balance(list(seconds), seconds, 2) == [["a.py", "d.py"], ["b.py", "c.py"]]
    assert soak.balance(["x.py"], {}, 3) == [["x.py"]]  # no empty share


def test_summary_counts_the_streak_of_each_test_over_one_commits_files(tmp_path, capsys):
    _junit(tmp_path / "abc.20261201T000000.xml", {"tests.t::one": "failed", "tests.t::two": "passed"})
    _junit(tmp_path / "abc.20261202T000000-0.xml", {"tests.t::one": "passed"})
    _junit(tmp_path / "abc.20261202T000000-1.xml", {"tests.t::two": "passed", "tests.t::hub": "skipped"})
    _junit(tmp_path / "old.20261130T000000.xml", {"tests.t::one": "failed"})  # another commit: not counted
    assert soak.summary(tmp_path, "abc") == 1  # one failed run of this commit is on record
    out = capsys.readouterr().out
    assert "every test passed the last 1 run(s) in a row" in out
    assert "1 in a row, 1 failed: tests.t::one" in out and "skipped in every run: tests.t::hub" in out
