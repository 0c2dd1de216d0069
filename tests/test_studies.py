"""The catalog is keyword data: every study has both profiles as Profile records, and a study that
starts from a trained model declares it (SourceModel) with names the orchestrator can resolve."""
from __future__ import annotations

import dataclasses

import pytest

from orchestrator.studies import PROFILES, Profile, SourceModel, Study, all_studies, get_study, studies_of
from trainables.config import field_names

ALL = all_studies()


def test_records_take_keywords_only():
    study = get_study("lab1", "residual-mlp")
    fields = {f.name: getattr(study, f.name) for f in dataclasses.fields(Study)}
    with pytest.raises(TypeError):
        Study(*fields.values())
    with pytest.raises(TypeError):
        Profile({"epochs": 1}, 2)
    assert Study(**fields) == study


@pytest.mark.parametrize("study", ALL, ids=lambda s: s.key)
def test_every_study_has_both_profiles(study):
    assert tuple(study.profiles) == PROFILES
    for profile in study.profiles.values():
        assert isinstance(profile, Profile) and profile.per_cell >= 1 and isinstance(profile.datasets, tuple)
    assert study.profiles["quick"].datasets == ()  # quick runs offline on bundled data


def test_a_study_without_both_profiles_is_refused():
    study = get_study("lab1", "residual-mlp")
    with pytest.raises(ValueError, match="profiles"):
        dataclasses.replace(study, profiles={"quick": study.profiles["quick"]})


@pytest.mark.parametrize("study", [s for s in ALL if s.source is not None], ids=lambda s: s.key)
def test_a_declared_source_names_existing_studies_and_config_fields(study):
    source: SourceModel = study.source
    names = {s.name for s in studies_of(source.lab or study.lab)}
    assert source.candidates and all(group and set(group) <= names for group in source.candidates)
    assert {"source_run", "source_checkpoint", "source_cache"} <= set(field_names(study.config_cls))


def test_the_studies_that_start_from_a_trained_model_declare_it():
    """Lab 1's transfer and CAM start from a CNN; Lab 4's post-hoc studies probe the classifier
    study's model, and that study runs first in the lab (a whole-lab run trains it before them)."""
    assert [s.key for s in ALL if s.source is not None] == ["lab1/transfer", "lab1/cam", "lab4/ood", "lab4/fgsm",
                                                             "lab4/targeted"]
    lab4 = [s.name for s in studies_of("lab4")]
    assert lab4[0] == "classifier"
    for name in ("ood", "fgsm", "targeted"):
        assert get_study("lab4", name).source.candidates == (("classifier",),)
    assert get_study("lab1", "transfer").source.candidates == (("residual-cnn", "resnet"), ("residual-cnn",),
                                                                ("resnet",))
