"""Image data held on the training device as one uint8 tensor; batches, crops and flips are tensor ops.

airbench's recipe: no DataLoader workers, no per-image PIL transforms in the loop. torchvision
datasets are only used to obtain the arrays (and to download them, in the prefetch step only).
Normalisation lives inside the model (`models.Normalize`), so batches here are floats in [0, 1]:
Lab 4's attacks need exactly that pixel space.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

# Per-channel mean/std of the training images in [0, 1] (the usual published values; digits computed
# from sklearn's 1,797 images, synthetic by construction).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3760,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
TORCHVISION = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN"}
DATASETS = tuple(STATS)
Dataset = Literal["digits", "mnist", "cifar10", "cifar100", "svhn", "synthetic"]  # a config field's type: STATS' keys


class DataMissing(FileNotFoundError):
    """A dataset is not in the data folder and may not (or could not) be downloaded."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8, (N, C, H, W), on the training device
    y: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class ImageData:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


# ---------------------------------------------------------------- raw arrays (CPU, numpy)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    return x, d.target.astype(np.int64)


def _synthetic(n: int = 1200, classes: int = 10, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """FakeData-like noise plus a class-dependent bright patch: learnable, for fast tests."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0.5, 0.15, (n, 3, size, size))
    cells = size // 2
    for k in range(classes):
        r, c = divmod(k % (cells * cells), cells)
        x[y == k, k % 3, r * 2 % size:(r * 2 % size) + 2, c * 2 % size:(c * 2 % size) + 2] += 0.4
    return (np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)


def _torchvision_arrays(name: str, root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION[name])
    kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        ds = cls(str(root), download=download, **kwargs)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        raise DataMissing(f"{name} not found in {root} ({e})") from None
    data = ds.data.numpy() if torch.is_tensor(ds.data) else np.asarray(ds.data)
    labels = getattr(ds, "targets", None)
    labels = getattr(ds, "labels") if labels is None else labels
    labels = labels.numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if data.ndim == 3:  # MNIST: (N, H, W)
        data = data[:, None]
    elif data.shape[-1] == 3:  # CIFAR: (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(data), labels.astype(np.int64)


def has_dataset(name: str, data_dir: Path | None) -> bool:
    """Whether `name` is in data_dir as the loaders read it: every file of both splits (raw_splits
    reads both, Lab 4's OOD sets included), with torchvision's own integrity check."""
    if ":" in name:  # "hf-model:..." / "hf-dataset:...": Hugging Face assets (trainables/hub.py)
        from .hub import has_asset

        return has_asset(name, data_dir)
    if name not in TORCHVISION:
        return True
    if data_dir is None:
        return False
    try:  # opening the test split checks every file of MNIST and CIFAR; SVHN checks only that split's
        _torchvision_arrays(name, data_dir, train=False, download=False)
    except DataMissing:
        return False
    if name == "svhn":  # the train split's file too, without loading its 73k images here
        from torchvision.datasets import SVHN, utils

        _, filename, md5 = SVHN.split_list["train"]
        return utils.check_integrity(str(Path(data_dir) / filename), md5)
    return True


def download_dataset(name: str, data_dir: Path) -> None:
    """Downloads into a temporary folder beside data_dir, then moves into place: never half-written."""
    if ":" in name:
        from .hub import download_asset

        download_asset(name, data_dir)
        return
    if name not in TORCHVISION or has_dataset(name, data_dir):
        return
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION[name])
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
            for split in (("train", "test") if name == "svhn" else (True, False)):
                kwargs = {"split": split} if name == "svhn" else {"train": split}
                cls(tmp, download=True, **kwargs)
            for item in Path(tmp).iterdir():
                target = data_dir / item.name
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                shutil.move(str(item), target)
    except Exception as e:  # no network, checksum mismatch, disk full, ...
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataMissing(f"could not download {name} into {data_dir}: {reason}") from None


def raw_splits(name: str, data_dir: Path | None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """(train arrays, test arrays or None when the dataset has no official test split)."""
    if name == "digits":
        return _digits(), None
    if name == "synthetic":
        return _synthetic(), None
    if name not in TORCHVISION:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    if data_dir is None:
        raise DataMissing(f"{name} needs a data folder (--data-dir)")
    return (_torchvision_arrays(name, data_dir, True, False), _torchvision_arrays(name, data_dir, False, False))


# ---------------------------------------------------------------- splits on the device
def _select_classes(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isin(y, classes)
    remap = {c: i for i, c in enumerate(classes)}
    return x[keep], np.array([remap[int(v)] for v in y[keep]], dtype=np.int64)


def load_image_data(name: str, data_dir: Path | None, device: torch.device, *, val_fraction: float = 0.1,
                    seed: int = 0, classes: tuple[int, ...] = (), max_train: int = 0,
                    max_val_test: int = 0) -> ImageData:
    """Train/val/test splits on `device`. Validation is held out of the training set (by `seed`); datasets
    without an official test split (digits, synthetic) hold out a test split the same way.
    `classes` keeps those labels only (relabelled 0..k-1); `max_train` caps the training set,
    `max_val_test` the validation and the test set (each a fixed subset: the same in every trial)."""
    (x, y), test = raw_splits(name, data_dir)
    if classes:
        x, y = _select_classes(x, y, classes)
        if test is not None:
            test = _select_classes(*test, classes)
    # The test images are fixed (seed 12345, whatever the trial's seed); the validation images vary
    # with the trial's `seed`, so the seeds of --repeats sample the split too. The trials of one
    # search share its seed: they are compared on the same validation images. Seed 0 keeps the
    # permutation of seed 12345 alone (the split before seeds varied it).
    order = np.random.default_rng(12345).permutation(len(y))
    n_val = int(round(len(y) * val_fraction))
    if test is None:
        n_test = n_val
        test = (x[order[:n_test]], y[order[:n_test]])
        order = order[n_test:]
    if seed:
        order = order[np.random.default_rng((12345, seed)).permutation(len(order))]
    val_idx, train_idx = order[:n_val], order[n_val:]
    if max_train:
        train_idx = train_idx[:max_train]
    if max_val_test:
        val_idx = val_idx[:max_val_test]
        pick = np.random.default_rng(54321).permutation(len(test[1]))[:max_val_test]  # a file's order may be by class
        test = (test[0][np.sort(pick)], test[1][np.sort(pick)])

    def put(xs: np.ndarray, ys: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(xs)).to(device), torch.from_numpy(ys).to(device))

    mean, std = STATS[name]
    return ImageData(name=name, train=put(x[train_idx], y[train_idx]), val=put(x[val_idx], y[val_idx]),
                     test=put(*test), num_classes=len(classes) if classes else int(y.max()) + 1,
                     mean=mean[: x.shape[1]], std=std[: x.shape[1]])


# ---------------------------------------------------------------- batches and augmentation
def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding=pad) with zero fill, then RandomHorizontalFlip, for a whole batch of
    any dtype as ONE gather on the flattened padded planes (the flip folded into the column index).
    Done on the uint8 images before the float conversion: 2.3x faster than a float advanced-index
    crop and a float flip, with the same draws in the same order (benchmarks/data_path.py)."""
    b, c, h, w = x.shape
    device = x.device
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=gen)
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    else:
        pad = 0
        dy = dx = torch.zeros(b, dtype=torch.long, device=device)
    cols = torch.arange(w, device=device).expand(b, w)
    if flip:  # a mirrored image reads its crop's columns right to left
        mirrored = torch.rand(b, device=device, generator=gen) < 0.5
        cols = torch.where(mirrored[:, None], w - 1 - cols, cols)
    rows = torch.arange(h, device=device)[None, :, None] + dy[:, None, None]       # (B, H, 1)
    index = (rows * (w + 2 * pad) + (cols + dx[:, None])[:, None, :]).view(b, 1, h * w)
    planes = x.reshape(b, c, -1)
    return planes.gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def batches(split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            crop_pad: int = 0, flip: bool = False, rank: int = 0, world_size: int = 1,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float batches in [0, 1]. Under DDP every rank draws the same permutation (seeded by seed and
    epoch) and takes an equal-length slice of it, so ranks step in lockstep."""
    device = split.x.device
    n = len(split)
    gen = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, device=device, generator=gen) if shuffle else torch.arange(n, device=device)
    per_rank = n // world_size if world_size > 1 else n
    order = order[rank * per_rank:(rank + 1) * per_rank]
    for start in range(0, per_rank, batch_size):
        idx = order[start:start + batch_size]
        x = split.x[idx]
        if crop_pad > 0 or flip:
            x = random_crop_flip(x, crop_pad, flip, gen)
        yield to_float(x), split.y[idx]
