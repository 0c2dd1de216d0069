"""The device-resident data path: splits, batches, augmentation, normalisation statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.data import STATS, Split, batches, load_image_data, random_crop_flip
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
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4).repeat(200, 1, 1, 1)
    out = random_crop_flip(x, 1, False, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for img in out[:50]:
        kept = img[img > 0]
        # every non-zero pixel is an original pixel value, and at least a 3x3 block survives
        assert set(kept.tolist()) <= set(range(1, 17)) and len(kept) >= 9
    assert len({tuple(o.flatten().tolist()) for o in out}) == 9  # all 3x3 shifts occur


def test_random_flip_flips_about_half_horizontally():
    x = torch.rand(1000, 1, 4, 4)
    out = random_crop_flip(x, 0, True, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped | same).all() and 400 < int(flipped.sum()) < 600


def _reference_batches(split, batch_size, *, seed, epoch, crop_pad, flip, rank=0, world_size=1):
    """torchvision's RandomCrop(padding) + RandomHorizontalFlip written per image with slices, drawing
    the same random numbers in the same order as the loader (permutation, dy, dx, flip coin)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(split), generator=gen)
    per_rank = len(split) // world_size
    order = order[rank * per_rank:(rank + 1) * per_rank]
    for start in range(0, per_rank, batch_size):
        idx = order[start:start + batch_size]
        x, (h, w) = split.x[idx].float() / 255, split.x.shape[2:]
        b = len(idx)
        if crop_pad:
            dy = torch.randint(0, 2 * crop_pad + 1, (b,), generator=gen)
            dx = torch.randint(0, 2 * crop_pad + 1, (b,), generator=gen)
            padded = torch.nn.functional.pad(x, (crop_pad,) * 4)
            x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
        if flip:
            mirrored = torch.rand(b, generator=gen) < 0.5
            x = torch.stack([img.flip(2) if m else img for img, m in zip(x, mirrored)])
        yield x, split.y[idx]


@pytest.mark.parametrize("pad,flip,world_size", [(4, True, 1), (0, True, 1), (4, False, 1), (1, True, 2)])
def test_augmented_batches_match_a_per_image_reference(pad, flip, world_size):
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (300, 3, 12, 10), dtype=torch.uint8, generator=gen),
                  torch.randint(0, 10, (300,), generator=gen))
    for rank in range(world_size):
        kwargs = dict(seed=3, epoch=2, crop_pad=pad, flip=flip, rank=rank, world_size=world_size)
        ours = list(batches(split, 64, shuffle=True, **kwargs))
        ref = list(_reference_batches(split, 64, **kwargs))
        assert len(ours) == len(ref) > 0
        for (x1, y1), (x2, y2) in zip(ours, ref):
            assert x1.dtype == torch.float32 and torch.equal(x1, x2) and torch.equal(y1, y2)


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
