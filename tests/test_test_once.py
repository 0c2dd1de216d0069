"""Test once (#16), in the science: with `ctx.evaluate_test` off (a study's search) a trainable
reports no test number and writes no file drawn from the test split; on (the test phase, --repeats)
it reports them with its last result. In-process, on tiny configs (no Ray); the orchestrator's side
is in tests/test_study_e2e.py, test_outcomes.py and the labs' e2e tests."""
from __future__ import annotations

import pytest
import torch

from orchestrator.studies import get_study, studies_of
from tests.test_lab4_unit import tiny
from trainables.context import LocalContext
from trainables.lab1.classifier import Lab1Config
from trainables.lab1.classifier import train as lab1_train
from trainables.lab4.robustness import train as lab4_train

LAB1 = Lab1Config(dataset="digits", epochs=2, batch_size=64, width=16, depth=1, seed=0)
TEST_FILES = ("ood_curves.json", "robustness.json", "targeted.json", "figures/")  # Lab 4's test-split files


def test_every_catalog_study_tests_once():
    """Every trainable of the catalog reads ctx.evaluate_test; a study whose trainable did not would
    set test_once=False and have every finished trial tested."""
    for lab in ("lab1", "lab3", "lab4"):
        assert [s.name for s in studies_of(lab) if not s.test_once] == [], lab


def test_the_lab1_classifier_tests_only_when_asked():
    torch.manual_seed(0)
    off, on = LocalContext(evaluate_test=False), LocalContext()
    lab1_train(LAB1, off)
    lab1_train(LAB1, on)
    assert not any(k.startswith("test_") for r in off.reports for k in r)
    assert {"test_acc", "test_loss"} <= set(on.reports[-1]) and off.finished and on.finished
    # the same training either way: the test phase's re-run is the searched model
    assert off.reports[-1]["weights_digest"] == on.reports[-1]["weights_digest"]
    assert off.reports[-1]["val_acc"] == on.reports[-1]["val_acc"]


@pytest.mark.parametrize("study", ["classifier", "ood", "fgsm", "adv-train", "targeted"])
def test_lab4_evaluates_the_test_split_only_when_asked(study):
    torch.set_num_threads(1)
    cfg = tiny(study, target=1)
    off, on = LocalContext(evaluate_test=False), LocalContext()
    lab4_train(cfg, off)
    lab4_train(cfg, on)
    val_side = {k for k in off.reports[-1]}
    assert not any(k.startswith("test_") for k in val_side), val_side
    assert get_study("lab4", study).metric in val_side  # the search still has its target
    assert {"test_acc", "test_loss"} <= set(on.reports[-1])
    computed = set(on.reports[-1]) - val_side  # what only the test split gives
    assert computed and all(not k.startswith("val_") for k in computed), computed
    assert not any(name.startswith(TEST_FILES) for name in off.files), sorted(off.files)
    assert off.reports[-1]["weights_digest"] == on.reports[-1]["weights_digest"]
