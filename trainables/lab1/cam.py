"""Lab 1 explainability: Class Activation Maps (Zhou et al. 2016, written here) and Grad-CAM /
Grad-CAM++ (the `grad-cam` package) on a trained CNN with global average pooling + a linear head.

CAM of class c:  M_c(i, j) = sum_k w_ck A_k(i, j), with A the last conv feature maps and w_c the
classifier's row of class c. Since the logit is y_c = mean_ij M_c(i, j) + b_c, Grad-CAM's weights
(spatial means of dy_c/dA_k) are w_ck / (h*w): for such a net Grad-CAM on the last maps IS the CAM,
up to the positive factor 1/(h*w) (the test checks it). Grad-CAM on an earlier stage is not.

A trial: one method (and layer), heat maps of the predicted class, logged as figures
(input | heat map | overlay per image: N test images per class, and the most confident mistakes),
plus a faithfulness number on validation images: how much the predicted class' probability drops
when the 20% most salient pixels are replaced by the mean pixel, against 20% random pixels.

In-process:  python -c "from trainables.lab1.cam import *; from trainables.context import LocalContext;
                        print(train(CamConfig(), LocalContext()))"
Through the orchestrator: python orchestrator/run.py lab1 --study cam
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import bounded, check
from ..context import Context, figure_bytes, json_bytes
from ..data import ImageData, Split, to_float
from ..models import ConvNet
from ..recipe import load_data
from ..training import evaluate, predict
from .figures import cam_grid
from .source import SourceFields, describe, obtain_source

Method = Literal["cam", "gradcam", "gradcam++"]
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CamConfig(SourceFields):
    method: Method = "cam"
    layer: Literal["last", "previous"] = "last"  # Grad-CAM target: last stage, or the one before it
    images_per_class: int = bounded(4, ge=1)      # rows of each class grid (test images)
    mistakes: int = bounded(8, ge=0)              # rows of the most-confident-mistakes grid
    max_classes: int = bounded(10, ge=1)          # class grids for the first classes only (CIFAR-100 would be 100)
    delete_fraction: float = bounded(0.2, gt=0, lt=1)  # share of pixels replaced in the faithfulness check
    max_eval: int = bounded(500, ge=1)            # validation images for the faithfulness check
    # reports per trial: one (the orchestrator's ASHA horizon)
    epochs: int = bounded(1, ge=1, le=1, note="a CAM trial reports once")
    seed: int = bounded(0, ge=0)

    def check(self) -> None:
        super().check()
        check(self.method != "cam" or self.layer == "last", "layer",
              "CAM weights the last feature maps (the classifier's input); use a Grad-CAM method for 'previous'")


class ClassActivationMap:
    """CAM for a global-average-pool + linear classifier net. Registers a forward hook on
    `target_layer` (the layer whose output is pooled into the classifier) and owns its handle:
    use it as a context manager so the hook is removed afterwards (pytorch-grad-cam's pattern)."""

    def __init__(self, model: nn.Module, target_layer: nn.Module, classifier: nn.Linear) -> None:
        self.model = model.eval()
        self.classifier = classifier
        self.activations: torch.Tensor | None = None
        self.handles = [target_layer.register_forward_hook(self._save)]

    def _save(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.activations = output.detach()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw maps (B, h, w) at feature resolution, signed; logits (B, K)). `classes`: the class
        to explain per image (default: the predicted one)."""
        self.activations = None
        logits = self.model(x)
        if self.activations is None:
            raise RuntimeError("the target layer was not run by the model's forward")
        classes = logits.argmax(1) if classes is None else classes
        weights = self.classifier.weight[classes]  # (B, C): the classifier row of each image's class
        return torch.einsum("bc,bchw->bhw", weights, self.activations), logits

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.activations = None

    def __enter__(self) -> "ClassActivationMap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image scaling to [0, 1] (pytorch-grad-cam's `scale_cam_image` formula)."""
    flat = maps.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / (1e-7 + flat.max(1, keepdim=True).values)).view_as(maps)


def to_heat_maps(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Raw maps (B, h, w) -> ReLU, scaled to [0, 1], bilinearly resized to the image: the same
    steps pytorch-grad-cam applies to its maps, so CAM and Grad-CAM are drawn alike."""
    maps = _minmax(raw.clamp(min=0))
    maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return _minmax(maps)


@torch.no_grad()
def stage_sizes(model: ConvNet, x: torch.Tensor) -> list[int]:
    """The side length (pixels) of each stage's output maps: the resolution a heat map has."""
    h, sizes = model.stem(model.normalize(x)), []
    for stage in model.stages:
        h = stage(h)
        sizes.append(int(h.shape[-1]))
    return sizes


def target_layer(model: ConvNet, layer: str) -> nn.Module:
    if layer == "previous" and len(model.stages) < 2:
        raise ValueError(f"layer: the model has {len(model.stages)} stage(s), no 'previous' one")
    return model.stages[-1] if layer == "last" else model.stages[-2]


def heat_maps(model: ConvNet, method: str, layer: str, x: torch.Tensor, classes: torch.Tensor,
              batch_size: int = 256) -> torch.Tensor:
    """Heat maps (B, H, W) in [0, 1] of `classes` for float images x, by `method`."""
    out = []
    for i in range(0, len(x), batch_size):
        xb, cb = x[i:i + batch_size], classes[i:i + batch_size]
        if method == "cam":
            with ClassActivationMap(model, model.stages[-1], model.head) as cam:
                raw, _ = cam(xb, cb)
            out.append(to_heat_maps(raw, tuple(xb.shape[-2:])))
        else:
            out.append(_grad_cam(model, method, target_layer(model, layer), xb, cb))
    return torch.cat(out)


def _grad_cam(model: ConvNet, method: str, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    with torch.enable_grad(), cls(model=model, target_layers=[layer]) as cam:  # hooks released on exit
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return torch.from_numpy(maps).to(x.device)


@torch.no_grad()
def probability_drop(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, fraction: float,
                     fill: torch.Tensor, seed: int) -> tuple[float, float]:
    """Mean drop of the predicted class' probability when the `fraction` most salient pixels (by
    `maps`) are replaced by `fill`, and when as many random pixels are: (salient, random)."""
    model.eval()
    b, _, h, w = x.shape
    probs = model(x).softmax(1)
    pred = probs.argmax(1, keepdim=True)
    k = max(1, round(fraction * h * w))
    gen = torch.Generator(device=x.device).manual_seed(seed)
    picks = {"salient": maps.flatten(1).topk(k, dim=1).indices,
             "random": torch.rand(b, h * w, generator=gen, device=x.device).argsort(1)[:, :k]}
    drops = {}
    for name, idx in picks.items():
        mask = torch.zeros(b, h * w, dtype=torch.bool, device=x.device).scatter_(1, idx, True).view(b, 1, h, w)
        after = model(torch.where(mask, fill, x)).softmax(1)
        drops[name] = (probs.gather(1, pred) - after.gather(1, pred)).mean().item()
    return drops["salient"], drops["random"]


def class_names(dataset: str, classes: tuple[int, ...], num_classes: int) -> list[str]:
    full = list(CIFAR10) if dataset == "cifar10" else [str(i) for i in range(max(num_classes, 10))]
    return [full[c] for c in classes] if classes else full[:num_classes]


def _grid(model: ConvNet, cfg: CamConfig, split: Split, idx: torch.Tensor, probs: torch.Tensor,
          names: list[str], title: str) -> bytes:
    x = to_float(split.x[idx])
    pred = probs[idx].argmax(1)
    maps = heat_maps(model, cfg.method, cfg.layer, x, pred)
    titles = [f"true {names[int(t)]} | pred {names[int(p)]} ({float(probs[i, p]):.2f})"
              for i, t, p in zip(idx.tolist(), split.y[idx].tolist(), pred.tolist())]
    return figure_bytes(cam_grid(x.cpu(), maps.cpu(), titles, title))


def figures(model: ConvNet, cfg: CamConfig, data: ImageData, names: list[str]) -> tuple[dict[str, bytes], int]:
    """One grid per class (its first test images) and one of the most confident mistakes."""
    probs = predict(model, data.test.x).softmax(1)
    label = cfg.method if cfg.method == "cam" else f"{cfg.method} ({cfg.layer} stage)"
    files = {}
    for c in range(min(data.num_classes, cfg.max_classes)):
        idx = (data.test.y == c).nonzero()[:, 0][: cfg.images_per_class]
        if len(idx):
            files[f"figures/cam/class_{c:02d}_{names[c]}.png"] = _grid(model, cfg, data.test, idx, probs, names,
                                                                       f"{label}: class {names[c]}")
    wrong = (probs.argmax(1) != data.test.y).nonzero()[:, 0]
    if cfg.mistakes and len(wrong):
        confidence = probs[wrong].max(1).values
        idx = wrong[confidence.argsort(descending=True)[: cfg.mistakes]]
        files["figures/cam/mistakes.png"] = _grid(model, cfg, data.test, idx, probs, names,
                                                  f"{label}: most confident mistakes")
    return files, len(wrong)


def train(cfg: CamConfig, ctx: Context) -> dict[str, float]:
    """Heat maps of one method on the source CNN: figures and a faithfulness score, reported once."""
    torch.manual_seed(cfg.seed)
    src, model, source_metrics = obtain_source(cfg, cfg.seed, ctx)
    model = model.to(ctx.device).eval()
    data = load_data(src, ctx)  # the CNN's own splits: its test images were never trained on
    names = class_names(src.dataset, src.classes, data.num_classes)
    val_loss, val_acc = evaluate(model, data.val)

    x = to_float(data.val.x[: cfg.max_eval])
    maps = heat_maps(model, cfg.method, cfg.layer, x, predict(model, data.val.x[: cfg.max_eval]).argmax(1))
    fill = torch.tensor(data.mean, device=x.device).view(1, -1, 1, 1)  # the mean pixel: "no information"
    salient, random = probability_drop(model, x, maps, cfg.delete_fraction, fill, cfg.seed)
    map_size = stage_sizes(model, x[:1])[-1 if cfg.layer == "last" else -2]
    metrics = {"epoch": 1, "val_loss": val_loss, "val_acc": val_acc, "val_drop/salient": salient,
               "val_drop/random": random, "val_faithfulness": salient - random, "map_size": float(map_size),
               **source_metrics}
    files: dict[str, bytes] = {}
    if ctx.evaluate_test:  # the figures show test images too: the selected method's trial draws them
        files, mistakes = figures(model, cfg, data, names)
        metrics["test_loss"], metrics["test_acc"] = evaluate(model, data.test)
        metrics["test_mistakes"] = float(mistakes)
    files.update({"config.json": json_bytes(asdict(cfg)), "source.json": json_bytes(describe(src))})
    ctx.report(metrics, files=files, final=True)
    return metrics
