"""Out-of-distribution detection: scores, metrics, the autoencoder and the OOD image sets.

Convention, everywhere: a score is "higher = more in-distribution", and the in-distribution (ID)
images are the positive class. So AUROC is P(score(ID) > score(OOD)); `aupr_in` is average
precision with ID positive, `aupr_out` with OOD positive (on the negated score); `fpr95` is the
fraction of OOD images still accepted at the threshold that keeps 95% of the ID images.

Scores (each a function of a batch of pixels in [0, 1]):
  msp       max softmax probability (Hendrycks & Gimpel 2017)
  msp_t     max softmax of logits / T (temperature scaling alone)
  maxlogit  the largest logit (Hendrycks et al. 2022)
  energy    T * logsumexp(logits / T) with T = 1, the negative free energy (Liu et al. 2020)
  odin      msp_t after a small input step that raises it (Liang et al. 2018); the step is taken in
            pixel space and clipped to [0, 1], eps in pixel units
  ae        minus the per-image mean squared reconstruction error of a convolutional autoencoder
            whose sigmoid output lies in [0, 1], the range of its input
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import auc, precision_recall_curve, roc_curve
from torch import nn

from ..data import load_image_data, to_float

SCORES = ("msp", "msp_t", "maxlogit", "energy", "odin", "ae")
CLASSIFIER_SCORES = SCORES[:-1]


# ---------------------------------------------------------------------------------------- metrics
def _labels_scores(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]  # ID = 1 = positive
    return labels, np.r_[id_scores, ood_scores].astype(np.float64)


def _fpr_at(fpr: np.ndarray, tpr: np.ndarray, tpr_level: float) -> float:
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """FPR at the first ROC threshold whose TPR (ID kept) reaches `tpr_level`."""
    fpr, tpr, _ = roc_curve(*_labels_scores(id_scores, ood_scores))
    return _fpr_at(fpr, tpr, tpr_level)


def _average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """sklearn's average_precision_score, binary case, from its own precision_recall_curve: the step
    integral sum (R_n - R_{n-1}) P_n, the same arithmetic (so the same bits; tests/test_ood.py)."""
    precision, recall, _ = precision_recall_curve(positive, scores)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR95 of one score (higher = more ID). One ROC curve serves AUROC
    (roc_auc_score is auc of the same roc_curve) and FPR95: sklearn's input checks cost more than
    the curves on a probe's few thousand scores, and every post-hoc trial computes these 12 times."""
    labels, scores = _labels_scores(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auroc": float(auc(fpr, tpr)),
            "aupr_in": _average_precision(labels, scores),
            "aupr_out": _average_precision(1 - labels, -scores),
            "fpr95": _fpr_at(fpr, tpr, 0.95)}


def curve_points(id_scores: np.ndarray, ood_scores: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """ROC (fpr, tpr) and PR (recall, precision, ID positive) points, thinned to at most
    `max_points` each: small enough for the JSON the parent run plots from."""
    labels, scores = _labels_scores(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)

    def thin(n: int) -> np.ndarray:
        return np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(int))

    r, p = thin(len(fpr)), thin(len(recall))
    return {"fpr": fpr[r].round(5).tolist(), "tpr": tpr[r].round(5).tolist(),
            "recall": recall[p].round(5).tolist(), "precision": precision[p].round(5).tolist()}


# ---------------------------------------------------------------------------------------- scores
def msp(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return F.softmax(logits / temperature, dim=1).amax(1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    return logits.amax(1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy T * logsumexp(f(x) / T): higher for ID."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


def odin(model: nn.Module, x: torch.Tensor, temperature: float, eps: float) -> torch.Tensor:
    """ODIN: x' = clip(x + eps * sign(grad_x log max softmax(f(x) / T)), 0, 1), scored by
    msp(f(x') / T). The step raises the score of ID images more than that of OOD ones."""
    if eps > 0:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            log_msp = F.log_softmax(model(x) / temperature, dim=1).amax(1).sum()
            (grad,) = torch.autograd.grad(log_msp, x)
        x = (x + eps * grad.sign()).clamp(0, 1).detach()
    with torch.no_grad():
        return msp(model(x), temperature)


def classifier_scores(model: nn.Module, x_float: torch.Tensor, temperature: float, odin_eps: float,
                      batch_size: int = 512) -> dict[str, np.ndarray]:
    """Every classifier-based score of a set of images (floats in [0, 1]), model in eval mode."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in CLASSIFIER_SCORES}
    for start in range(0, len(x_float), batch_size):
        x = x_float[start:start + batch_size]
        with torch.no_grad():
            logits = model(x)
        batch = {"msp": msp(logits), "msp_t": msp(logits, temperature), "maxlogit": max_logit(logits),
                 "energy": energy(logits), "odin": odin(model, x, temperature, odin_eps)}
        for name, values in batch.items():
            out[name].append(values.double().cpu().numpy())
    return {name: np.concatenate(v) for name, v in out.items()}


# ---------------------------------------------------------------------------------------- autoencoder
class ConvAutoencoder(nn.Module):
    """Two stride-2 convs -> a `latent`-dim bottleneck -> two transposed convs -> sigmoid.

    Input and output are pixels in [0, 1] (no normalisation, sigmoid output): the reconstruction
    error compares like with like, which a tanh or unbounded output would not."""

    def __init__(self, shape: tuple[int, int, int], width: int = 16, latent: int = 16) -> None:
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ValueError(f"autoencoder needs H and W divisible by 4, got {h}x{w}")
        self.inner = (2 * width, h // 4, w // 4)
        flat = 2 * width * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(flat, latent))
        self.expand = nn.Sequential(nn.Linear(latent, flat), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(width, c, 4, 2, 1),
            nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.expand(self.encoder(x)).view(-1, *self.inner)
        return self.decoder(z)


@torch.no_grad()
def reconstruction_score(ae: nn.Module, x_float: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Minus the per-image mean squared error (higher = better reconstructed = more ID)."""
    ae.eval()
    errors = [(ae(x) - x).pow(2).flatten(1).mean(1) for x in x_float.split(batch_size)]
    return (-torch.cat(errors)).double().cpu().numpy()


# ---------------------------------------------------------------------------------------- OOD sets
# CIFAR-100 classes that are near-duplicates of CIFAR-10 ones (automobile/truck): left out so that
# the "CIFAR-100" OOD set holds only classes absent from CIFAR-10.
CIFAR100_OVERLAP = ("bus", "pickup_truck", "streetcar", "tractor")


def uniform_noise(n: int, shape: tuple[int, int, int], seed: int, device: torch.device) -> torch.Tensor:
    """i.i.d. uniform pixels, quantised to uint8 like real images; deterministic in `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8).to(device)


def fake_data(n: int, shape: tuple[int, int, int], seed: int, device: torch.device) -> torch.Tensor:
    """torchvision's FakeData images (standard-normal pixels through ToPILImage), as uint8 NCHW."""
    from torchvision.datasets import FakeData

    ds = FakeData(size=n, image_size=shape, num_classes=10, random_offset=seed)
    arrays = [np.asarray(ds[i][0], dtype=np.uint8) for i in range(n)]
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _cifar100_absent_classes(data_dir: Path | None) -> tuple[int, ...]:
    from torchvision.datasets import CIFAR100

    names = CIFAR100(str(data_dir), train=False, download=False).classes
    return tuple(i for i, name in enumerate(names) if name not in CIFAR100_OVERLAP)


def ood_images(ood_set: str, *, dataset: str, id_classes: tuple[int, ...], n: int,
               shape: tuple[int, int, int], data_dir: Path | None, device: torch.device,
               seed: int) -> torch.Tensor:
    """`n` uint8 OOD images of the ID `shape` (fewer if the set is smaller), a fixed seeded draw.

    heldout: the ID dataset's classes left out of training (digits 5-9 when ID is 0-4);
    noise: uniform pixels; fakedata: torchvision FakeData; cifar100 (absent classes), svhn: test splits."""
    if ood_set == "noise":
        return uniform_noise(n, shape, seed, device)
    if ood_set == "fakedata":
        return fake_data(n, shape, seed, device)
    if ood_set == "heldout":
        num = 10  # every dataset with a held-out option here has 10 labels
        rest = tuple(c for c in range(num) if c not in id_classes)
        data = load_image_data(dataset, data_dir, device, classes=rest)
        x = torch.cat([data.train.x, data.val.x, data.test.x])
    else:
        classes = _cifar100_absent_classes(data_dir) if ood_set == "cifar100" else ()
        x = load_image_data(ood_set, data_dir, device, classes=classes).test.x
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[order.to(x.device)]


def split_halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation half, test half): ODIN's T and eps are chosen on the first, reported on the second."""
    half = len(x) // 2
    return x[:half], x[half:]


ScoreFn = Callable[[torch.Tensor], dict[str, np.ndarray]]


def score_histogram(id_scores: np.ndarray, ood_scores: np.ndarray, bins: int = 40) -> dict[str, list[float]]:
    """ID and OOD densities of one score on common bins (edges span both): what its histogram panel
    draws, small enough for the trial's JSON (the driver draws it; figures cost a probe more than scoring)."""
    both = np.r_[id_scores, ood_scores]
    edges = np.linspace(both.min(), both.max() + 1e-12, bins + 1)
    return {"edges": edges.tolist(), "id": np.histogram(id_scores, bins=edges, density=True)[0].tolist(),
            "ood": np.histogram(ood_scores, bins=edges, density=True)[0].tolist()}


def score_split(score_fn: ScoreFn, split_x: torch.Tensor) -> dict[str, np.ndarray]:
    return score_fn(to_float(split_x))


def evaluate_scores(score_fn: ScoreFn, id_x: torch.Tensor, ood_x: torch.Tensor
                    ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(metrics per score, ID scores, OOD scores) for uint8 ID and OOD images."""
    id_s, ood_s = score_split(score_fn, id_x), score_split(score_fn, ood_x)
    return {name: ood_metrics(id_s[name], ood_s[name]) for name in id_s}, id_s, ood_s
