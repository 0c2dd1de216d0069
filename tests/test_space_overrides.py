"""A search space never silently overrides a profile's choice: for every study and profile, a key the
profile sets and the space samples is declared, either `pinned` (the profile's value stays, the
space's suggestion is replaced) or `searched` (the space chooses; the base value is only the default
outside a search). What runs is checked through the real path: plan() -> TrialSpec -> PinnedSpace."""
from __future__ import annotations

import optuna
import pytest

from orchestrator.cli import plan
from orchestrator.studies import PROFILES, all_studies
from orchestrator.trial import TrialSpec
from orchestrator.tuning import PinnedSpace

ALL = all_studies()
PROBES = 64  # random trials per space: enough to reach every conditional branch of these spaces


def sampled_keys(space, pins) -> set[str]:
    """Every parameter the (pinned) space can sample, over PROBES random trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opt = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    keys: set[str] = set()
    for _ in range(PROBES):
        trial = opt.ask()
        PinnedSpace(space, pins)(trial)
        keys |= set(trial.params)
        opt.tell(trial, 0.0)
    return keys


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("study", ALL, ids=lambda s: s.key)
def test_every_overlap_of_profile_and_space_is_declared(study, profile):
    prof = study.profiles[profile]
    overlap = sampled_keys(study.space, {}) & set(prof.base)
    assert overlap == set(prof.pinned) | set(prof.searched), (
        f"{study.key} [{profile}]: the space samples {sorted(overlap)}, which the profile also sets; declare each "
        f"in Profile.pinned (keep the profile's value) or Profile.searched (let the space choose)")


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("study", ALL, ids=lambda s: s.key)
def test_trials_keep_every_value_the_profile_does_not_declare_searched(study, profile):
    """As the trials get them: plan() (the profile's pins) -> TrialSpec.resolve(PinnedSpace(...))."""
    (planned,) = plan(study.lab, [study.name], profile, {}, seed=0)
    spec = TrialSpec(lab=study.lab, study=study.name, base=planned.base, pins=planned.pins)
    prof = study.profiles[profile]
    kept = {k: v for k, v in prof.base.items() if k not in prof.searched}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opt = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(16):
        trial = opt.ask()
        cfg = spec.resolve(PinnedSpace(study.space, spec.pins)(trial))
        assert {k: getattr(cfg, k) for k in kept} == kept
        opt.tell(trial, 0.0)


def test_full_fgsm_attacks_the_profiles_resnet18_and_quick_compares_mlp_and_cnn():
    from orchestrator.studies import get_study

    fgsm = get_study("lab4", "fgsm")
    (full,) = plan("lab4", ["fgsm"], "full", {}, seed=0)
    assert full.pins == {"model": "resnet18"} and "model" not in sampled_keys(fgsm.space, full.pins)
    assert PinnedSpace(fgsm.space, full.pins)(optuna.create_study().ask())["model"] == "resnet18"  # logged as sampled
    (quick,) = plan("lab4", ["fgsm"], "quick", {}, seed=0)
    assert "model" not in quick.pins and "model" in sampled_keys(fgsm.space, quick.pins)
    (chosen,) = plan("lab4", ["fgsm"], "full", {"model": "cnn"}, seed=0)  # --set still wins over the profile
    assert chosen.pins == {"model": "cnn"}
