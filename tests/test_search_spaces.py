"""Each study's define-by-run space yields valid configs for 20 Optuna trials sampled as a study
runs them: the profile's pins fixed and its cells enqueued (orchestrator.tuning)."""
from __future__ import annotations

import optuna
import pytest

from orchestrator.studies import all_studies, describe_space
from orchestrator.tuning import PinnedSpace, cell_points
from trainables.config import from_dict

ALL = all_studies()


@pytest.mark.parametrize("study", ALL, ids=lambda s: s.key)
@pytest.mark.parametrize("profile", ["quick", "full"])
def test_space_yields_valid_configs(study, profile):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opt = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    base = study.base_config(profile)
    pins = {k: base[k] for k in study.profiles[profile].pinned}
    for point in cell_points(study, pins, 20, profile):
        opt.enqueue_trial(point)
    space = PinnedSpace(study.space, pins)
    for i in range(20):
        trial = opt.ask()
        cfg = from_dict(study.config_cls, {**base, **space(trial)})
        assert cfg is not None
        opt.tell(trial, float(i % 3))


def test_pinned_parameters_are_not_sampled():
    from search_spaces.lab1 import residual_mlp

    opt = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = PinnedSpace(residual_mlp, {"depth": 64})
    for _ in range(5):
        trial = opt.ask()
        values = space(trial)
        assert values["depth"] == 64 and "depth" not in trial.params and "residual" in trial.params
        opt.tell(trial, 0.0)


def test_describe_space_finds_conditional_branches():
    from search_spaces.lab1 import resnet

    described = describe_space(resnet)
    assert set(described) == {"optimizer", "lr", "weight_decay", "batch_size"}
    assert "|" in described["lr"]  # two ranges, one per optimizer


@pytest.mark.parametrize("samples,random_first", [(4, 3), (8, 3), (24, 8), (200, 10)])
def test_tpe_warm_up_fits_the_trial_budget(samples, random_first):
    from orchestrator.tuning import tpe_sampler

    sampler = tpe_sampler(0, samples)
    assert sampler._n_startup_trials == random_first  # a quick 8-trial study is not all random
