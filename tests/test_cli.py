"""The CLI contract: list, help, and bad input -> one line naming the problem, exit 2, nothing left behind."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.conftest import LOCAL_RAY

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "orchestrator" / "run.py")]


def _bad(tmp_path: Path, capsys, *args: str) -> str:
    """Runs the CLI in tmp_path with bad input; checks exit 2, one line, no MLflow DB, no results."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = main(list(args))
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "bad input left something behind"
    return err


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    return tmp_path


@pytest.mark.parametrize("args, expected", [
    (["lab9"], "lab9"),
    (["lab1", "--study", "nope"], "nope"),
    (["lab1", "--set", "dpeth=3"], "dpeth"),
    (["lab1", "--set", "depth=two"], "depth"),
    (["lab1", "--set", "depth=0"], "depth"),
    (["lab1", "--set", "lr=0"], "lr"),
    (["lab1", "--set", "lr=-0.1"], "lr"),
    (["lab1", "--set", "width=0"], "width"),
    (["lab1", "--set", "residual=perhaps"], "residual"),
    (["lab1", "--set", "depth"], "KEY=VALUE"),
    (["lab1", "--set", "train_backend=spark"], "train_backend"),
    (["lab1", "--num-samples", "0"], "num-samples"),
    (["lab1", "--cpus-per-trial", "0"], "cpus-per-trial"),
    (["lab1", "--profile", "huge"], "profile"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp, capsys, args, expected):
    assert expected in _bad(tmp, capsys, *args)


def test_missing_data_offline_for_full_profile(tmp, capsys):
    err = _bad(tmp, capsys, "lab1", "--study", "residual-mlp", "--profile", "full", "--offline",
               "--data-dir", str(tmp / "data"))
    assert "mnist" in err and "not found" in err


def test_unwritable_storage(tmp, capsys):
    err = _bad(tmp, capsys, "lab1", "--storage", str(tmp / "file" / "results"))
    assert "--storage" in err


def test_list_prints_labs_studies_spaces_and_metrics(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for text in ("lab1", "mlp-capacity", "residual-mlp", "residual-cnn", "resnet", "depth: {1, 2, 4, 8, 16, 32}",
                 "residual: {False, True}", "target: max val_acc", "GPUs per trial: 0.25",
                 "  classifier: ", "best fitting trial of the latest classifier study, else trained once"):
        assert text in out, text


def test_real_entry_point_help_and_error():
    ok = subprocess.run([*RUN, "lab1", "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "--workers-per-trial" in ok.stdout and "residual-cnn" in ok.stdout
    bad = subprocess.run([*RUN, "lab1", "--set", "depth=0", *LOCAL_RAY], capture_output=True, text=True, timeout=120,
                         cwd=REPO / "tests")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["run.py: error: --set depth: must be >= 1, got 0"]


def test_run_options_are_resolved_once_into_a_frozen_record(tmp_path, monkeypatch):
    """What the session gets: absolute paths, defaults filled in, no argparse Namespace."""
    import dataclasses

    from orchestrator.cli import build_parser, run_options
    from orchestrator.options import RunOptions

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = build_parser().parse_args(["lab1", "--study", "residual-mlp", "--study", "resnet", "--set", "epochs=2",
                                      "--storage", "results", "--report-dir", "rep", "--seed", "3"])
    planned, opts = run_options(args)
    assert [p.study.name for p in planned] == ["residual-mlp", "resnet"] and planned[0].base["epochs"] == 2
    assert isinstance(opts, RunOptions) and dataclasses.is_dataclass(opts)
    assert opts.storage == str(tmp_path / "results") and opts.report_dir == tmp_path / "rep"
    assert opts.data_dir == tmp_path / "data" and opts.launch == tmp_path
    assert opts.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (opts.profile, opts.num_samples, opts.max_concurrent, opts.seed, opts.gpus_per_trial) == \
        ("quick", None, 4, 3, None)
    assert opts.resume is None and not opts.quiet
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 4  # type: ignore[misc]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # resolving creates nothing
