"""Every bad input is one line on stderr, exit code 2, and nothing written: no results folder, no
tracking store, no invocation record, no report. `cli.main` runs in-process with the session's entry
point replaced, so no Ray starts whatever the CLI accepts; a property-based test draws values of
every type for every config key of every study and checks that each is accepted or refused in one
line, never with a traceback."""
from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import sqlite3
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import studies as registry
from orchestrator.cli import main
from trainables.config import field_names, rules


def _call(cwd: Path, args: list[str]) -> tuple[int, str, mock.Mock]:
    """main(args) in cwd, with run_planned replaced; returns (exit code, stderr, the replacement)."""
    here = os.getcwd()
    os.chdir(cwd)
    err = io.StringIO()
    try:
        with mock.patch("orchestrator.session.run_planned", return_value=0) as session, \
                contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(args)
    finally:
        os.chdir(here)
    return rc, err.getvalue(), session


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A launch folder holding a file, a corrupt store, a folder named like a store, another
    program's SQLite database; MLflow settings of the environment cleared."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "file").write_text("a file, not a folder")
    noise = random.Random(0).randbytes(3000)  # seeded: the same corrupt store every run
    (tmp_path / "corrupt.db").write_bytes(b"SQLite format 3\x00" + noise)
    # a corrupt store whose header says WAL mode (bytes 18-19 = 2): SQLite makes -wal / -shm files to read it
    (tmp_path / "wal.db").write_bytes(b"SQLite format 3\x00" + b"\x10\x00\x02\x02" + noise[4:])
    (tmp_path / "garbage.db").write_bytes(b"not a database at all\n" * 50)
    (tmp_path / "folder.db").mkdir()
    with sqlite3.connect(tmp_path / "other.db") as con:
        con.execute("CREATE TABLE invoices (id INTEGER)")
    return tmp_path


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (arguments, a word the one line must contain). {tmp} is the launch folder.
BAD = [
    (["lab9"], "lab9"),
    (["lab1", "--study", "nope"], "nope"),
    (["lab1", "--study", "mlp-capacity", "--study", "mlp-capacity"], "given twice"),
    (["lab1", "--study", "residual-mlp", "--study", "resnet", "--study", "residual-mlp"], "residual-mlp"),
    (["lab1", "--bogus-option"], "bogus"),
    (["lab1", "--set", "dpeth=3"], "dpeth"),
    (["lab1", "--set", "depth=two"], "depth"),
    (["lab1", "--set", "depth=0"], "depth"),
    (["lab1", "--set", "depth=2.5"], "depth"),
    (["lab1", "--set", "lr=0"], "lr"),
    (["lab1", "--set", "lr=-0.1"], "lr"),
    (["lab1", "--set", "lr=nan"], "lr"),
    (["lab1", "--set", "lr=inf"], "lr"),
    (["lab1", "--set", "width=0"], "width"),
    (["lab1", "--set", "residual=perhaps"], "residual"),
    (["lab1", "--set", "dataset=imagenet"], "dataset"),
    (["lab1", "--set", "classes=a,b"], "classes"),
    (["lab1", "--set", "val_fraction=0.9"], "val_fraction"),
    (["lab1", "--set", "depth=1\n2"], "depth"),
    (["lab1", "--set", "depth"], "KEY=VALUE"),
    (["lab1", "--set", "=3"], "KEY=VALUE"),
    (["lab1", "--set", "depth=2", "depth=4"], "given twice"),
    (["lab1", "--set", "train_backend=spark"], "train_backend"),
    (["lab4", "--study", "fgsm", "--set", "epsilon=2"], "epsilon"),
    (["lab3", "--study", "sentiment-lora", "--set", "classifier=tree"], "classifier"),
    (["lab1", "--num-samples", "0"], "num-samples"),
    (["lab1", "--num-samples", "-3"], "num-samples"),
    (["lab1", "--num-samples", "two"], "num-samples"),
    (["lab1", "--max-concurrent", "0"], "max-concurrent"),
    (["lab1", "--cpus-per-trial", "0"], "cpus-per-trial"),
    (["lab1", "--cpus-per-trial", "nan"], "cpus-per-trial"),
    (["lab1", "--cpus-per-trial", "inf"], "cpus-per-trial"),
    (["lab1", "--gpus-per-trial", "-1"], "gpus-per-trial"),
    (["lab1", "--gpus-per-trial", "nan"], "gpus-per-trial"),
    (["lab1", "--workers-per-trial", "0"], "workers-per-trial"),
    (["lab1", "--profile", "huge"], "profile"),
    (["lab1", "--seed", "-1"], "--seed"),
    (["lab1", "--seed", str(2**32)], "--seed"),
    (["lab1", "--seed", "1.5"], "--seed"),
    (["lab1", "--max-failures", "-2"], "--max-failures"),
    (["lab1", "--max-failures", "-5"], "--max-failures"),
    (["lab1", "--repeats", "-1"], "--repeats"),
    (["lab1", "--storage", "{tmp}/file/results"], "--storage"),
    (["lab1", "--storage", "foo://bucket/results"], "foo"),
    (["lab1", "--mlflow-uri", "sqlite:///{tmp}/corrupt.db"], "corrupt.db"),
    (["lab1", "--mlflow-uri", "sqlite:///{tmp}/garbage.db"], "not a readable SQLite database"),
    (["lab1", "--mlflow-uri", "sqlite:///{tmp}/wal.db"], "wal.db"),
    (["lab1", "--mlflow-uri", "sqlite:///{tmp}/folder.db"], "not a file"),
    (["lab1", "--mlflow-uri", "sqlite:///{tmp}/other.db"], "not an MLflow tracking store"),
    (["lab1", "--mlflow-uri", "http://[::1"], "not a valid address"),
    (["lab1", "--mlflow-uri", "sqlite:///{tmp}/file/mlflow.db"], "not a folder"),
    (["lab1", "--mlflow-uri", "{tmp}/mlruns"], "file stores"),
    (["lab1", "--mlflow-uri", "ftp://example.org/store"], "not a tracking URI"),
    (["lab1", "--mlflow-uri", "http://127.0.0.1:{port}"], "--mlflow-uri"),  # served from a corrupt store
    (["lab1", "--report-dir", "{tmp}/file"], "--report-dir"),
    (["lab1", "--data-dir", "{tmp}/file"], "--data-dir"),
    (["lab1", "--study", "transfer", "--set", "source_run=doesnotexist"], "no MLflow run"),
    (["lab1", "--study", "cam", "--set", "source_checkpoint={tmp}/none.pt"], "source_checkpoint"),
    (["lab1", "--study", "transfer", "--set", "source_checkpoint={tmp}/file"], "source_checkpoint"),
    (["lab4", "--study", "fgsm", "--set", "source_run=doesnotexist"], "no MLflow run"),
    (["lab4", "--study", "ood", "--set", "source_checkpoint={tmp}/file"], "source_checkpoint"),
    (["lab4", "--study", "adv-train", "--set", "source_run=abc"], "source_run"),  # trains its own model
    (["lab1", "--resume"], "nothing to resume"),
    (["lab1", "--resume", "--study", "nope"], "nope"),
    (["lab1", "--resume", "--study", "resnet", "--study", "resnet"], "given twice"),
    (["lab1", "--profile", "full", "--offline", "--data-dir", "{tmp}/data"], "not found"),
    (["report", "lab9"], "lab9"),
    (["report", "lab1"], "no tracking store"),
    (["report", "lab1", "--study", "resnet", "--study", "resnet"], "given twice"),
    (["report", "lab1", "--mlflow-uri", "sqlite:///{tmp}/corrupt.db"], "corrupt.db"),
    (["prefetch", "lab9", "--data-dir", "{tmp}/data"], "lab9"),
    (["list", "extra"], "extra"),
]


def test_there_are_at_least_forty_distinct_bad_inputs():
    assert len({tuple(a) for a, _ in BAD}) == len(BAD) >= 40


@pytest.mark.parametrize("args, expected", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(place, args, expected):
    if any("{port}" in a for a in args):  # a loopback server nobody runs: run.py would serve this store
        shutil.copy(place / "corrupt.db", place / "mlflow.db")
    before = sorted(p.name for p in place.iterdir())
    argv = [a.format(tmp=place, port=_closed_port()) for a in args]
    if argv[0] == "lab1" and "--resume" in argv:
        argv += ["--storage", str(place / "ray_results")]
    rc, err, session = _call(place, argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("run.py: error:"), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert not session.called, "bad input reached the session"
    assert sorted(p.name for p in place.iterdir()) == before, "bad input left something behind"


@pytest.mark.parametrize("args", [["lab1", "--max-failures", "-1"], ["lab1", "--seed", str(2**32 - 1)],
                                  ["lab1", "--seed", "0", "--repeats", "0", "--max-failures", "0"]])
def test_edge_values_are_accepted(place, args):
    rc, err, session = _call(place, args)
    assert rc == 0 and session.called and err == "", err
    opts = session.call_args.args[1]
    assert opts.max_failures >= -1 and 0 <= opts.seed <= 2**32 - 1


# ------------------------------------------------------------------------------ --set, every key
STUDIES = registry.all_studies()
WORDS = ["", "none", "null", "true", "false", "yes", "0", "1", "-1", "1e-3", "-0", "1e400", "-1e400", "nan", "inf",
         "0,1,2", ",", "a,b", "mlp", "cnn", "digits", "mnist", "cifar10", "adam", "sgd", " 2 ", "2 3", "=", "x=y",
         "/", ".", "..", "~", "ORG/NAME", "ünïcødé", "\t", "\n", "9" * 5000]


def _values(study) -> st.SearchStrategy[str]:
    choices = [str(c) for r in rules(study.config_cls) if isinstance(r.kind, tuple) for c in r.kind]
    return st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda f: f"{f:g}"),
        st.lists(st.integers(min_value=-3, max_value=200), max_size=6).map(lambda xs: ",".join(map(str, xs))),
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=4).map(
            lambda xs: ",".join(map(str, xs))),
        st.sampled_from(WORDS + choices),
        st.text(max_size=24),
    )


@pytest.mark.parametrize("study", STUDIES, ids=[s.key for s in STUDIES])
@settings(max_examples=5, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_set_value_is_accepted_or_refused_in_one_line(study, data, monkeypatch):
    """Each example sets every config key of the study, one --set at a time, to a drawn value."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    values = _values(study)
    with tempfile.TemporaryDirectory(prefix="dla-set-") as tmp:
        place = Path(tmp)
        for key in field_names(study.config_cls):
            value = data.draw(values, label=key)
            rc, err, session = _call(place, [study.lab, "--study", study.name, "--offline", "--set", f"{key}={value}"])
            lines = err.strip().splitlines()
            assert rc in (0, 2), (key, value, err)
            if rc == 2:
                assert len(lines) == 1 and lines[0].startswith("run.py: error:"), (key, value, err)
                assert not session.called
            else:
                assert err.strip() == "" and session.called, (key, value, err)
            assert list(place.iterdir()) == [], (key, value, "something was written")
