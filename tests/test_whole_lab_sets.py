"""`--set` over several studies (cli.plan): KEY applies to every chosen study that has that setting and is
an error only when none has it; STUDY.KEY targets one study and wins over KEY; a study's constant (a
range of one value, e.g. a CAM trial's single epoch) is kept under a lab-wide KEY and is an error
only when asked of that study."""
from __future__ import annotations

import pytest

from orchestrator.cli import main, plan
from orchestrator.options import UsageError

LAB1 = ["mlp-capacity", "residual-mlp", "residual-cnn", "resnet", "transfer", "cam"]


def planned(sets: dict[str, str], names: list[str] | None = None, lab: str = "lab1", profile: str = "quick"):
    return {p.study.name: p for p in plan(lab, names, profile, sets, seed=0)}


def test_a_lab_wide_key_goes_to_every_study_that_has_it_and_cam_keeps_its_one_epoch(capsys):
    got = planned({"epochs": "3"})
    assert list(got) == LAB1
    assert {n: p.base.get("epochs") for n, p in got.items() if n != "cam"} == dict.fromkeys(LAB1[:-1], 3)
    assert all(p.pins == {"epochs": 3} for n, p in got.items() if n != "cam") and got["cam"].pins == {}
    assert capsys.readouterr().out.strip() == ("--set epochs=3: mlp-capacity, residual-mlp, residual-cnn, resnet, "
                                               "transfer; cam keeps epochs=1 (a CAM trial reports once)")


def test_a_key_only_some_studies_have_applies_to_those_and_says_so(capsys):
    got = planned({"depth": "4", "variant": "knn"})
    assert [n for n, p in got.items() if p.pins.get("depth") == 4] == LAB1[:4]
    assert [n for n, p in got.items() if p.pins.get("variant") == "knn"] == ["transfer"]
    assert "depth" not in got["transfer"].base and "depth" not in got["cam"].base
    out = capsys.readouterr().out
    assert "--set depth=4: mlp-capacity, residual-mlp, residual-cnn, resnet (transfer, cam have no depth)" in out
    assert "--set variant=knn: transfer (mlp-capacity, residual-mlp, residual-cnn, resnet, cam have no variant)" in out


def test_a_study_scoped_key_targets_one_study_and_wins_over_the_lab_wide_one():
    got = planned({"transfer.epochs": "5", "epochs": "2", "residual-mlp.depth": "16"})
    assert got["transfer"].pins == {"epochs": 5} and got["resnet"].pins == {"epochs": 2}
    assert got["residual-mlp"].pins == {"epochs": 2, "depth": 16} and "depth" not in got["mlp-capacity"].pins
    assert planned({"train_backend": "ray-train", "cam.train_backend": "auto"})["cam"].run_keys == \
        {"train_backend": "auto"}


def test_the_same_on_the_full_profile_and_across_labs():
    got = planned({"epochs": "1", "max_eval": "16"}, lab="lab4", profile="full")
    assert all(p.base["epochs"] == 1 and p.base["max_eval"] == 16 for p in got.values())
    assert got["fgsm"].pins == {"model": "resnet18", "epochs": 1, "max_eval": 16}  # the profile's pin stays
    lab3 = planned({"epochs": "1", "max_train": "64"}, lab="lab3")
    assert lab3["sentiment-finetune"].pins == {"epochs": 1, "max_train": 64}  # epochs is searched there: pinned
    assert "max_train" not in lab3["clip-zeroshot"].pins  # CLIP has shots, not max_train


@pytest.mark.parametrize("sets, names, message", [
    ({"dpeth": "3"}, None, "--set dpeth: no chosen study has this setting (did you mean depth?)"),
    ({"depth": "0"}, None, "--set depth: must be >= 1, got 0"),
    ({"epochs": "3"}, ["cam"], "--set epochs: must be 1 (a CAM trial reports once), got 3"),
    ({"cam.epochs": "3"}, None, "--set epochs: must be 1 (a CAM trial reports once), got 3"),
    ({"variant": "knn"}, ["resnet", "cam"], "--set variant: no chosen study has this setting"),
    ({"transfer.epochs": "3"}, ["resnet"], "--set transfer.epochs: transfer is not among the chosen studies (resnet)"),
    ({"nope.epochs": "3"}, None, "--set nope.epochs: unknown study 'nope' for lab1"),
    ({"transfer.depth": "3"}, None, "unknown config key 'depth' for TransferConfig"),
    ({"cam.layer": "previous"}, None, "--set layer: CAM weights the last feature maps"),
])
def test_errors_name_the_key_and_why(sets, names, message):
    with pytest.raises(UsageError) as e:
        plan("lab1", names, "quick", sets, seed=0)
    assert message in str(e.value)


@pytest.mark.parametrize("item", ["=3", "epochs", ".epochs=3", "transfer.=3"])
def test_malformed_items_are_one_line(item, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["lab1", "--set", item]) == 2
    assert "--set expects KEY=VALUE or STUDY.KEY=VALUE" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
