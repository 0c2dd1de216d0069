"""`run.py LAB --smoke` (orchestrator/smoke.py): the plan shrunk (every study, both profiles), the per-study
verdict read from MLflow and the report, where its outputs go; end to end on the full-profile fixtures
(slow): a study whose model cannot load is reported FAILED with why, exit 3. A smoke run where every
study works: tests/test_full_profile.py (lab4)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from orchestrator import smoke
from orchestrator.cli import build_parser, plan, run_options
from orchestrator.studies import PROFILES, all_studies, get_study
from tests.test_full_profile import run_py
from trainables.config import from_dict

ALL = all_studies()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("study", ALL, ids=lambda s: s.key)
def test_every_study_shrinks_to_one_epoch_on_few_images(study, profile):
    (p,) = smoke.shrink(plan(study.lab, [study.name], profile, {}, seed=0))
    cfg = from_dict(study.config_cls, p.base)
    assert getattr(cfg, "epochs", 1) == 1 and getattr(cfg, "source_epochs", 1) == 1
    for key, limit in (("max_train", 256), ("max_val_test", 128), ("max_eval", 64), ("shots", 4), ("attack_steps", 5),
                       ("pgd_steps", 2), ("co_batch", 64)):
        if hasattr(cfg, key):
            assert 0 < getattr(cfg, key) <= limit, key
            assert p.pins[key] == getattr(cfg, key)  # a pin: a space that samples it gets it too
    assert set(study.profiles[profile].pinned) <= set(p.pins)


def test_a_set_value_wins_over_the_smoke_value():
    (p,) = smoke.shrink(plan("lab3", ["sentiment-finetune"], "full", {"max_train": "512", "epochs": "2"}, seed=0))
    assert p.pins["max_train"] == 512 and p.pins["epochs"] == 2 and p.base["max_train"] == 512


def test_capped_splits_load_at_most_that_many_images():
    from trainables.data import load_image_data

    data = load_image_data("digits", None, torch.device("cpu"), val_fraction=0.15, max_train=256, max_val_test=100)
    again = load_image_data("digits", None, torch.device("cpu"), val_fraction=0.15, max_train=256, max_val_test=100)
    assert (len(data.train), len(data.val), len(data.test)) == (256, 100, 100)
    assert torch.equal(data.test.x, again.test.x)  # the same subset in every trial


def test_outputs_go_under_smoke_unless_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    planned, opts = run_options(build_parser().parse_args(["lab1", "--study", "resnet", "--smoke"]))
    got = smoke.options(opts, planned, named_store=False, named_storage=False, named_report=False)
    assert got.mlflow_uri == f"sqlite:///{tmp_path / 'smoke' / 'mlflow.db'}" and got.num_samples == smoke.TRIALS
    assert got.storage == str(tmp_path / "smoke" / "ray_results")
    assert got.report_dir.parent == tmp_path / "smoke" / "reports" and got.report_dir.name.startswith("lab1-")
    named = dataclasses.replace(opts, num_samples=5, report_dir=tmp_path / "r")
    kept = smoke.options(named, planned, named_store=True, named_storage=True, named_report=True)
    assert (kept.mlflow_uri, kept.storage, kept.report_dir, kept.num_samples) == \
        (opts.mlflow_uri, opts.storage, tmp_path / "r", 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # deciding creates nothing


# ---------------------------------------------------------------- the verdict, on records as MLflow returns them
def _child(status: str, metrics: dict, error_file: str = "", start: int = 0, tested: bool = True) -> dict:
    tags = {**({"error_file": error_file} if error_file else {}), **({"tested": "true"} if tested else {})}
    return {"status": status, "metrics": metrics, "tags": tags, "start_time": start}


RESNET = get_study("lab1", "resnet")
SECTION = "## lab1/resnet: How well ...\n\n| optimizer | val_acc |\n| sgd | 0.5 |\n"


def test_verdict_ok_names_what_worked():
    inv = {"parent": {"start_time": 0}, "children": [_child("FINISHED", {"val_acc": 0.25}),
                                                     _child("FINISHED", {"best_val_acc": 0.5})]}
    assert smoke.verdict(RESNET, inv, SECTION) == (True, "data, model, loop, logging, report: 2 trials, best val_acc 0.5")


def test_verdict_says_where_a_trial_failed_and_why(tmp_path):
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  ...\nOSError: Unable to load weights from checkpoint file\n")
    early = {"parent": {"start_time": 0}, "children": [_child("FAILED", {}, str(error), 2), _child("FINISHED", {"val_acc": .1}),
                                                       _child("FAILED", {}, "", 5)]}
    ok, line = smoke.verdict(RESNET, early, SECTION)
    assert not ok and line == ("2/3 trials failed, the first before its first report (data, model or first epoch): "
                               "OSError: Unable to load weights from checkpoint file")
    late = {"parent": {"start_time": 0}, "children": [_child("FAILED", {"val_acc": 0.1, "train_loss": 2.0})]}
    assert "after its first epochs (training loop or final evaluation): (no error file)" in smoke.verdict(RESNET, late, SECTION)[1]


@pytest.mark.parametrize("inv, section, says", [
    (None, SECTION, "not run"),
    ({"parent": {"start_time": 0}, "children": []}, SECTION, "no trial started"),
    ({"parent": {"start_time": 0}, "children": [_child("FINISHED", {"train_loss": 1.0})]}, SECTION,
     "1 finished trials have no val_acc in MLflow (logging)"),
    ({"parent": {"start_time": 0}, "children": [_child("FINISHED", {"val_acc": 0.3}, tested=False)]}, SECTION,
     "no selected trial was tested (the test phase"),
    ({"parent": {"start_time": 0}, "children": [_child("FINISHED", {"val_acc": 0.3})]}, "", "the report has no section"),
    ({"parent": {"start_time": 0}, "children": [_child("FINISHED", {"val_acc": 0.3})]},
     "## lab1/resnet: q\n\nNot run yet.\n", "the report did not find its runs"),
])
def test_verdict_failures(inv, section, says):
    ok, line = smoke.verdict(RESNET, inv, section)
    assert not ok and says in line


def test_a_study_section_is_cut_from_the_report():
    report = f"# lab1 report\n\n{SECTION}\n## lab1/transfer: Do ...\n\nNot run yet.\n"
    assert smoke.section(report, RESNET) == SECTION
    assert smoke.section(report, get_study("lab1", "cam")) == ""


# ---------------------------------------------------------------- end to end on the fixtures
@pytest.mark.slow
def test_smoke_reports_a_model_that_does_not_load_and_exits_3(full_fixtures, tmp_path):
    """The weights file is there (pre-flight passes), but it is not a checkpoint: the trials fail loading."""
    import shutil

    from trainables.hub import local_snapshot

    data = tmp_path / "data"
    shutil.copytree(full_fixtures, data, symlinks=True)
    weights = local_snapshot("hf-model:openai/clip-vit-base-patch16", data) / "model.safetensors"
    weights.unlink()
    weights.write_bytes(b"not a checkpoint")
    done = run_py(tmp_path, "lab3", "--study", "clip-zeroshot", "--profile", "full", "--smoke", "--data-dir", str(data))
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if "lab3/clip-zeroshot" in x and x.lstrip().startswith("FAILED")]
    assert "2/2 trials failed, the first before its first report (data, model or first epoch)" in line
    assert "SafetensorError" in line  # the last line of the trial's traceback
    assert "smoke: 1 of 1 studies failed" in done.stdout
