"""Data path: the project's device-resident loader vs a torchvision DataLoader with PIL transforms.

Both produce the same thing from CIFAR-shaped uint8 images (N, 32, 32, 3): shuffled float batches in
[0, 1] of 256 images, randomly cropped (4-pixel padding) and flipped. The baseline is what the
torchvision tutorials do (`CIFAR10(transform=Compose([RandomCrop(32, 4), RandomHorizontalFlip(),
ToTensor()]))`: one PIL image per sample, collated by `DataLoader` workers, one per core), timed in
steady state (worker start-up excluded, which favours it). The candidate is
`trainables.data.batches` on the uint8 tensor (batched gather + flip). Goal on CPU: >= 4x.

    python benchmarks/data_path.py [--quick]
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

from common import Verdict, finish, interleaved, median, parser, repeats_of

import numpy as np
import torch

BATCH = 256  # images per batch, both sides
PAD = 4      # random-crop padding in pixels (CIFAR recipe)


class PilCifar(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__, on arrays in memory: HWC uint8 -> PIL -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def cifar_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def dataloader_rate(images: np.ndarray, labels: np.ndarray, workers: int) -> float:
    """Images/s of a torchvision-style DataLoader in steady state (from its first batch on)."""
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=PAD), T.RandomHorizontalFlip(), T.ToTensor()])
    loader = torch.utils.data.DataLoader(PilCifar(images, labels, tf), batch_size=BATCH, shuffle=True,
                                         num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)  # workers up and the pipeline primed
    start, seen = time.perf_counter(), 0
    for x, _ in it:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def project_rate(images: np.ndarray, labels: np.ndarray, epoch: int, batches: Callable[..., Any]) -> float:
    """Images/s of a `trainables.data.batches`-like loader over a whole epoch (uint8 NCHW tensor resident)."""
    from trainables.data import Split

    split = Split(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), torch.from_numpy(labels))
    start, seen = time.perf_counter(), 0
    for x, _ in batches(split, BATCH, shuffle=True, seed=0, epoch=epoch, crop_pad=PAD, flip=True):
        seen += len(x)
    return seen / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> Verdict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the project's loader (default 1: one core, against the "
                        "DataLoader's one worker per core; on a shared machine 2 threads can be 50x slower)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from trainables.data import batches

    n = 10_000 if args.quick else 50_000
    images, labels = cifar_like(n)
    workers = os.cpu_count() or 1
    epochs = iter(range(1000))
    runs = interleaved({"loader": lambda: dataloader_rate(images, labels, workers),
                        "project": lambda: project_rate(images, labels, next(epochs), batches)},
                       repeats_of(args))
    base, ours = median(runs["loader"]), median(runs["project"])
    v = Verdict("data path: device-resident batches vs DataLoader + PIL", ours / base,
                "trainables.data.batches / DataLoader (img/s)", ">=", 4.0,
                rows=[(f"DataLoader + PIL, {workers} worker processes", base, "img/s"),
                      (f"trainables.data.batches, {args.threads} thread(s)", ours, "img/s"),
                      ("images per epoch", n, ""), ("repeats (median)", len(runs["loader"]), "")],
                extra={"runs": runs, "torch_threads": args.threads})
    return finish(v, args)


if __name__ == "__main__":
    main()
