"""The device-resident data path: splits, batches, augmentation, normalisation statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.data import STATS, batches, load_image_data, random_crop, random_flip
from trainables.models import Normalize


def test_digits_splits_are_disjoint_and_cover_the_data():
    data = load_image_data("digits", None, torch.device("cpu"), val_fraction=0.15)
    assert data.shape == (1, 8, 8) and data.num_classes == 10
    assert data.train.x.dtype == torch.uint8 and data.train.x.max() > 200
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    rows = lambda s: {bytes(r) for r in s.x.reshape(len(s), -1).numpy()}  # noqa: E731
    assert not rows(data.val) & rows(data.test)


def test_class_subsets_are_relabelled():
    data = load_image_data("digits", None, torch.device("cpu"), classes=(5, 6, 7, 8, 9), max_train=100)
    assert data.num_classes == 5 and len(data.train) == 100
    assert set(data.train.y.tolist()) <= set(range(5))


def test_augmentation_preserves_labels_and_shapes():
    data = load_image_data("synthetic", None, torch.device("cpu"))
    plain = list(batches(data.train, 64, shuffle=True, seed=3, epoch=1))
    aug = list(batches(data.train, 64, shuffle=True, seed=3, epoch=1, crop_pad=2, flip=True))
    assert len(plain) == len(aug)
    for (x0, y0), (x1, y1) in zip(plain, aug):
        assert torch.equal(y0, y1) and x0.shape == x1.shape
        assert 0 <= x1.min() and x1.max() <= 1
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(plain, aug))


def test_random_crop_is_a_translation_with_zero_fill():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(200, 1, 1, 1) + 1
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for img in out[:50]:
        kept = img[img > 0]
        # every non-zero pixel is an original pixel value, and at least a 3x3 block survives
        assert set(kept.tolist()) <= set(range(1, 17)) and len(kept) >= 9
    assert len({tuple(o.flatten().tolist()) for o in out}) == 9  # all 3x3 shifts occur


def test_random_flip_flips_about_half_horizontally():
    x = torch.rand(1000, 1, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped | same).all() and 400 < int(flipped.sum()) < 600


def test_ddp_ranks_get_disjoint_equal_shards():
    data = load_image_data("digits", None, torch.device("cpu"))
    shards = [torch.cat([y for _, y in batches(data.train, 50, shuffle=True, seed=1, epoch=0, rank=r, world_size=2)])
              for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(data.train) // 2


@pytest.mark.parametrize("name", ["digits", "mnist", "cifar10"])
def test_normalisation_uses_the_stated_statistics(name):
    mean, std = STATS[name]
    norm = Normalize(mean, std)
    x = torch.rand(2, len(mean), 5, 5)
    expected = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    assert torch.allclose(norm(x), expected)


def test_digits_statistics_match_the_data():
    from sklearn.datasets import load_digits

    x = load_digits().images / 16.0
    (mean,), (std,) = STATS["digits"]
    assert abs(x.mean() - mean) < 1e-3 and abs(x.std() - std) < 1e-3
    assert np.isclose(STATS["cifar10"][0][0], 0.4914)
