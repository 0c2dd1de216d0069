"""Studies compare cells: every combination of the compared factors gets trials (enqueued in turn,
the sampler tuning only the nuisance parameters), ASHA compares trials within a cell only, a budget
below the cells says so, and --repeats re-train with seeds other than the search's."""
from __future__ import annotations

import dataclasses
from collections import Counter
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator import session
from orchestrator.studies import PROFILES, all_studies, get_study
from orchestrator.study import cell_key, grid
from orchestrator.tuning import CellASHA, PinnedSpace, cell_points, scheduler_for
from trainables.data import load_image_data

ALL = all_studies()
WITH_CELLS = [s for s in ALL if s.cells]


def test_grid_is_every_combination_first_factor_slowest():
    assert grid(depth=(1, 2), residual=(False, True)) == (
        {"depth": 1, "residual": False}, {"depth": 1, "residual": True},
        {"depth": 2, "residual": False}, {"depth": 2, "residual": True})


def test_cell_keys_tell_true_from_one():
    assert cell_key({"residual": True}, ("residual",)) != cell_key({"residual": 1}, ("residual",))


@pytest.mark.parametrize("study", WITH_CELLS, ids=lambda s: s.key)
def test_every_cell_is_a_point_of_the_space(study):
    """An enqueued cell's values must be choices of the space, or Optuna would warn and sample."""
    opt = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for cell in study.cells:
        opt.enqueue_trial(dict(cell))
        trial = opt.ask()
        study.space(trial)
        for name, value in cell.items():
            dist = trial.distributions[name]
            assert isinstance(dist, optuna.distributions.CategoricalDistribution), name
            assert value in dist.choices and trial.params[name] == value, (name, value)
        opt.tell(trial, 0.0)


@pytest.mark.parametrize("study", ALL, ids=lambda s: s.key)
def test_each_default_budget_covers_every_cell(study):
    """T >= 2 trials per cell on quick wherever there is a nuisance parameter to tune inside it."""
    nuisance = set(_space_params(study)) - set(study.factors)
    for profile in PROFILES:
        assert study.trials(profile) >= len(study.cells_for(_profile_pins(study, profile), profile))
    assert study.profiles["quick"].per_cell >= (2 if nuisance else 1), nuisance


def test_the_residual_studies_compare_every_depth_with_and_without_the_skip():
    for name in ("residual-mlp", "residual-cnn"):
        study = get_study("lab1", name)
        assert study.factors == ("depth", "residual") == study.report_by
        assert Counter(c["residual"] for c in study.cells) == {False: len(study.cells) // 2, True: len(study.cells) // 2}
    assert max(c["depth"] for c in get_study("lab1", "residual-mlp").cells) == 32


def test_pins_leave_the_cells_and_shrink_the_budget():
    study = get_study("lab1", "residual-mlp")
    assert study.cells_for({"depth": 8}) == ({"residual": False}, {"residual": True})
    assert study.trials("quick", {"depth": 8}) == 2 * study.profiles["quick"].per_cell
    assert study.cells_for({"depth": 8, "residual": True}) == ({},)
    fgsm = get_study("lab4", "fgsm")  # the full profile pins the model: one cell
    assert fgsm.trials("full") == fgsm.profiles["full"].per_cell and fgsm.trials("quick") == 2 * 2


def test_the_ood_study_compares_the_ood_sets_each_profile_can_read():
    """A profile's own cells (Profile.cells): quick scores the bundled sets, full every set; the
    budget, the enqueued points and `--set ood_set=...` follow the profile's cells."""
    from search_spaces import lab4 as spaces

    study = get_study("lab4", "ood")
    assert study.factors == ("ood_set",) == study.report_by
    assert study.cells_for({}, "quick") == tuple({"ood_set": s} for s in spaces.QUICK_OOD_SETS)
    assert study.cells_for({}, "full") == tuple({"ood_set": s} for s in spaces.OOD_SETS) == study.cells_for({})
    assert study.trials("quick") == 2 * study.profiles["quick"].per_cell
    assert study.trials("full") == 4 * study.profiles["full"].per_cell
    assert {p["ood_set"] for p in cell_points(study, {}, 6, "quick")} == set(spaces.QUICK_OOD_SETS)
    assert study.trials("quick", {"ood_set": "heldout"}) == study.profiles["quick"].per_cell


@pytest.mark.parametrize("cells, why", [((), "distinct cells"), (({"ood_set": "mnist"},), "distinct cells"),
                                        (({"ood_set": "noise"}, {"ood_set": "noise"}), "distinct cells"),
                                        (({"temperature": 1},), "distinct cells")])
def test_a_profiles_cells_must_be_distinct_cells_of_its_study(cells, why):
    study = get_study("lab4", "ood")
    quick = dataclasses.replace(study.profiles["quick"], cells=cells)
    with pytest.raises(ValueError, match=why):
        dataclasses.replace(study, profiles={**study.profiles, "quick": quick})


def test_cell_points_go_round_the_cells():
    study = get_study("lab1", "residual-cnn")
    points = cell_points(study, {}, 19)
    assert points[:8] == [dict(c) for c in study.cells] == points[8:16]
    assert points[16:] == [dict(c) for c in study.cells[:3]]
    assert cell_points(dataclasses.replace(study, cells=(), report_by=(), findings=(), cell_references=()), {}, 5) == []


def test_the_search_runs_every_cell_per_cell_times_and_tunes_the_rest():
    """OptunaSearch as Tune drives it (suggest / on_trial_complete), without Ray: the default budget
    of residual-mlp gives each of its 12 cells its 2 trials, and lr still varies inside a cell."""
    study = get_study("lab1", "residual-mlp")
    n = study.trials("quick")
    searcher = OptunaSearch(space=PinnedSpace(study.space, {}), metric="val_acc", mode="max",
                            sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3),
                            points_to_evaluate=cell_points(study, {}, n))
    configs = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.1 + 0.01 * i})
    counts = Counter(cell_key(c, study.factors) for c in configs)
    assert len(counts) == len(study.cells) == 12 and set(counts.values()) == {study.profiles["quick"].per_cell}
    assert len({c["lr"] for c in configs if c["depth"] == 32 and c["residual"]}) == 2


def _trial(tid: str, **config):
    return SimpleNamespace(trial_id=tid, config=config)


def test_asha_compares_trials_within_their_cell_only():
    """A deep plain net far below a shallow one is not stopped for it: only its own cell's trials
    set its bar. The same trials under one ASHA are stopped."""
    study = get_study("lab1", "resnet")
    sched = scheduler_for(study, {}, epochs=8)
    assert isinstance(sched, CellASHA)
    sched.set_search_properties("val_acc", "max")
    one = scheduler_for(study, {"optimizer": "sgd"}, epochs=8)  # pinned: a single cell, plain ASHA
    assert not isinstance(one, CellASHA)
    one.set_search_properties("val_acc", "max")
    good = [_trial(f"g{i}", optimizer="sgd") for i in range(3)]
    low = _trial("low", optimizer="adam")
    for s in (sched, one):
        for t in [*good, low]:
            s.on_trial_add(None, t)
        for t in good:
            assert s.on_trial_result(None, t, {"training_iteration": 2, "val_acc": 0.9}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, low, {"training_iteration": 2, "val_acc": 0.1}) == TrialScheduler.CONTINUE
    assert one.on_trial_result(None, low, {"training_iteration": 2, "val_acc": 0.1}) == TrialScheduler.STOP


def test_a_budget_below_the_cells_says_so_in_one_line(capsys):
    study = get_study("lab1", "residual-mlp")
    session._warn_of_gaps(study, {}, 4, "quick")
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["== lab1/residual-mlp: 4 trials cover 4 of its 12 cells (depth x residual); the comparison will "
                   "have gaps (the quick default is 24)"]
    session._warn_of_gaps(study, {}, 24, "quick")
    session._warn_of_gaps(study, {"depth": 8}, 2, "quick")
    assert capsys.readouterr().out == ""


def test_repeat_seeds_are_new_seeds():
    for seed in (0, 7, 2**32 - 1):
        seeds = session.repeat_seeds(seed, 5)
        assert len(set(seeds)) == 5 and seed not in seeds and all(0 <= s < 2**32 for s in seeds)


def test_the_validation_split_varies_with_the_seed_and_the_test_split_does_not():
    cpu = torch.device("cpu")
    base, same, other = (load_image_data("digits", None, cpu, val_fraction=0.15, seed=s) for s in (0, 0, 3))
    assert torch.equal(base.val.x, same.val.x)
    assert torch.equal(base.test.x, other.test.x) and torch.equal(base.test.y, other.test.y)
    assert not torch.equal(base.val.x, other.val.x)
    # train and val still partition the same images (nothing of test leaks in)
    flat = lambda d: {bytes(r) for r in torch.cat([d.train.x, d.val.x]).flatten(1).numpy().astype(np.float32)}
    assert flat(base) == flat(other)


def _space_params(study) -> list[str]:
    from orchestrator.studies import describe_space

    return list(describe_space(study.space))


def _profile_pins(study, profile: str) -> dict:
    chosen = study.profiles[profile]
    return {k: chosen.base[k] for k in chosen.pinned}


@pytest.mark.parametrize("study", [s for s in ALL if s.findings], ids=lambda s: s.key)
def test_each_finding_compares_two_levels_the_cells_have(study):
    for f in study.findings:
        levels = [c.get(f.factor) for c in study.cells]
        assert f.treatment in levels and f.control in levels and f.treatment != f.control
        assert f.metric == f"best_{study.metric}"  # the selection metric at each trial's best epoch


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_keeps_the_trial_processes_output_off_the_console(monkeypatch, quiet):
    """--quiet: no trial-process output forwarded to the driver (Ray's worker shutdown noise
    included); it stays in Ray's session logs. Without --quiet it is forwarded, as before."""
    import ray

    from orchestrator import tuning

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(tuning, "_live_cluster_address", lambda: None)
    monkeypatch.setattr(tuning, "worker_env", lambda: {})  # this process's environment stays as it is
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert tuning.connect_ray("local", worker_logs=not quiet) == "local"
    assert seen["log_to_driver"] is (not quiet)
