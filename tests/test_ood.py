"""OOD metrics against scikit-learn on hand-made scores (sign convention: higher score = more ID,
ID positive), FPR95 on a constructed case, the scores, the autoencoder and the OOD image sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from trainables.data import load_image_data
from trainables.lab4.ood import (ConvAutoencoder, classifier_scores, curve_points, energy, fake_data, fpr_at_tpr,
                            max_logit, msp, odin, ood_images, ood_metrics, reconstruction_score, uniform_noise)

CPU = torch.device("cpu")


def test_metrics_agree_with_sklearn_with_id_as_the_positive_class():
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    m = ood_metrics(id_s, ood_s)
    labels = np.r_[np.ones(300), np.zeros(200)]
    scores = np.r_[id_s, ood_s]
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["aupr_in"] == pytest.approx(average_precision_score(labels, scores))
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - labels, -scores))
    assert 0.7 < m["auroc"] < 0.8  # two unit Gaussians 1 apart: Phi(1 / sqrt 2) = 0.76


@settings(max_examples=200, deadline=None)
@given(id_s=hnp.arrays(np.float64, st.integers(1, 60), elements=st.sampled_from([-2.0, -0.5, 0.0, 0.25, 1.0, 3.0])
                       | st.floats(-5, 5)),
       ood_s=hnp.arrays(np.float64, st.integers(1, 60), elements=st.floats(-5, 5) | st.just(0.0)))
def test_metrics_are_sklearns_to_the_bit(id_s, ood_s):
    """ood_metrics computes AUROC and FPR95 from one roc_curve and AP from precision_recall_curve (the
    probe's cost is sklearn's input checks): the values must be exactly sklearn's, ties included."""
    m = ood_metrics(id_s, ood_s)
    labels, scores = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))], np.r_[id_s, ood_s]
    assert m["auroc"] == float(roc_auc_score(labels, scores))
    assert m["aupr_in"] == float(average_precision_score(labels, scores))
    assert m["aupr_out"] == float(average_precision_score(1 - labels, -scores))
    assert m["fpr95"] == fpr_at_tpr(id_s, ood_s)


def test_sign_convention_higher_scores_mean_in_distribution():
    id_s, ood_s = np.array([0.9, 0.8, 0.7]), np.array([0.2, 0.1])
    good = ood_metrics(id_s, ood_s)
    assert good == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    flipped = ood_metrics(ood_s, id_s)  # a score where OOD ranks higher is a perfect inverse detector
    assert flipped["auroc"] == 0.0 and flipped["fpr95"] == 1.0
    assert ood_metrics(-id_s, -ood_s)["auroc"] == 0.0


def test_aupr_in_and_out_differ_when_the_classes_are_imbalanced():
    rng = np.random.default_rng(1)
    id_s, ood_s = rng.normal(1, 1, 1000), rng.normal(0, 1, 50)
    m = ood_metrics(id_s, ood_s)
    assert m["aupr_in"] > 0.9 > m["aupr_out"]  # the majority class makes its own AP easy


def test_fpr95_on_a_constructed_case():
    id_s = np.arange(1, 101, dtype=float)  # keeping 95% of ID means accepting scores >= 6
    ood_s = np.array([20.5, 10.5, 6.5, 5.5, 3.5, 2.5, 1.5, 0.5, -1.0, -2.0])  # 3 of 10 are >= 6
    assert fpr_at_tpr(id_s, ood_s) == pytest.approx(0.3)
    assert ood_metrics(id_s, ood_s)["fpr95"] == pytest.approx(0.3)
    assert fpr_at_tpr(id_s, ood_s, tpr_level=0.5) == pytest.approx(0.0)  # accept >= 51: no OOD above


def test_curve_points_are_thinned_and_keep_the_corners():
    rng = np.random.default_rng(2)
    c = curve_points(rng.normal(1, 1, 5000), rng.normal(0, 1, 5000), max_points=50)
    assert len(c["fpr"]) <= 50 and len(c["recall"]) <= 50
    assert (c["fpr"][0], c["tpr"][0]) == (0.0, 0.0) and (c["fpr"][-1], c["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(c["fpr"]) >= 0)


def test_logit_scores():
    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert msp(logits)[1] == pytest.approx(1 / 3)
    assert msp(logits)[0] > msp(logits, temperature=10.0)[0] > 1 / 3  # T flattens the softmax
    assert torch.equal(max_logit(logits), torch.tensor([4.0, 1.0]))
    e = energy(logits)
    assert (e >= max_logit(logits)).all() and (e - max_logit(logits) <= np.log(3) + 1e-6).all()
    assert e[1] == pytest.approx(1.0 + np.log(3))


def _tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()


def test_odin_without_perturbation_is_temperature_scaled_msp_and_its_step_raises_the_score():
    model, x = _tiny_classifier(), torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        plain = msp(model(x), 100.0)
    assert torch.allclose(odin(model, x, 100.0, 0.0), plain)
    assert (odin(model, x, 100.0, 0.01) >= plain - 1e-7).all()
    scores = classifier_scores(model, x, 100.0, 0.0)
    assert set(scores) == {"msp", "msp_t", "maxlogit", "energy", "odin"}
    assert np.allclose(scores["odin"], scores["msp_t"]) and all(len(v) == 32 for v in scores.values())


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_autoencoder_output_matches_its_input_range(shape):
    torch.manual_seed(0)
    ae = ConvAutoencoder(shape, width=8, latent=16)
    x = torch.rand(4, *shape)
    out = ae(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    score = reconstruction_score(ae, x)
    assert score.shape == (4,) and (score <= 0).all()


def test_noise_sets_are_deterministic_uint8_images_of_the_id_shape():
    a, b = uniform_noise(16, (1, 8, 8), 3, CPU), uniform_noise(16, (1, 8, 8), 3, CPU)
    assert a.dtype == torch.uint8 and a.shape == (16, 1, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, uniform_noise(16, (1, 8, 8), 4, CPU))
    f = fake_data(6, (3, 32, 32), 0, CPU)
    assert f.dtype == torch.uint8 and f.shape == (6, 3, 32, 32) and torch.equal(f, fake_data(6, (3, 32, 32), 0, CPU))


def test_heldout_digits_are_the_classes_left_out_of_the_id_set():
    ood = ood_images("heldout", dataset="digits", id_classes=(0, 1, 2, 3, 4), n=300, shape=(1, 8, 8),
                     data_dir=None, device=CPU, seed=0)
    assert ood.shape == (300, 1, 8, 8)
    other = load_image_data("digits", None, CPU, classes=(5, 6, 7, 8, 9))
    pool = {bytes(img.numpy()) for split in (other.train, other.val, other.test) for img in split.x}
    assert all(bytes(img.numpy()) in pool for img in ood)
    ids = load_image_data("digits", None, CPU, classes=(0, 1, 2, 3, 4))
    id_pool = {bytes(img.numpy()) for split in (ids.train, ids.val, ids.test) for img in split.x}
    assert sum(bytes(img.numpy()) in id_pool for img in ood) == 0
