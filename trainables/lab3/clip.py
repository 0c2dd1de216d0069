"""Lab 3, CLIP: zero-shot classification from prompts, and LoRA adaptation (vision, text or both towers).

In-process:  python -c "from trainables.lab3.clip import *; from trainables.context import LocalContext;
                        print(train(ClipConfig(method='lora'), LocalContext()))"
Through the orchestrator: python orchestrator/run.py lab3 --study clip-lora

"zeroshot": class embeddings from prompt templates, top-1 and per-class accuracy on val and test.
"lora": PEFT LoRA on the attention projections of the chosen towers, trained with cross-entropy on
the zero-shot logits (CLIP-LoRA, Zanella & Ben Ayed 2024) on `shots` images per class; evaluated
with the text-prompt head (still a zero-shot classifier after adaptation) and with a linear probe on
the image embeddings, each before and after. Quick profile: the tiny CLIP and synthetic shapes of
trainables/lab3/clip_models.py (what that can and cannot show is explained there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .clip_models import SHAPE_CLASSES, TEMPLATES, PromptClassifier, load_clip, shapes_split
from ..config import Config, bounded, check
from ..context import Context, json_bytes
from ..data import Split, load_image_data
from .lora import PRESETS, apply_lora, param_counts, trainable_state
from ..training import Speed, make_scheduler, train_one_epoch, weights_digest

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100 = tuple((
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").replace("_", "~").split())
SHAPES_SIZES = {"train": 1024, "val": 320, "test": 800}  # images of the 16 shape classes (target domain)


@dataclass(frozen=True)
class ClipConfig(Config):
    method: Literal["zeroshot", "lora"] = "zeroshot"
    model: str = "tiny"            # "tiny" (offline stand-in) or a hub id, e.g. openai/clip-vit-base-patch16 / -patch32
    dataset: str = "shapes"        # shapes (offline) | cifar10 | cifar100 | hf-dataset:ORG/NAME (image, label columns)
    prompt: Literal["photo", "ensemble"] = "photo"  # "a photo of a {}." or the template ensemble
    shots: int = bounded(16, ge=0)  # LoRA training images per class (0 = the whole training split)
    max_eval: int = bounded(0, ge=0)  # cap on validation and test images (0 = all)
    eval_batch: int = bounded(256, ge=1)  # images per forward pass when evaluating
    epochs: int = bounded(10, ge=1)
    batch_size: int = bounded(32, ge=1)  # images per step (per worker under DDP)
    lr: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    lora_rank: int = bounded(2, ge=1, le=64)
    lora_alpha: float = bounded(4.0, gt=0)  # adapter scale = alpha / rank
    lora_dropout: float = bounded(0.0, ge=0, lt=1)
    lora_targets: str = "qkv"      # preset on the attention projections: qv | qkv | qkvo | all
    lora_towers: Literal["vision", "text", "both"] = "both"
    val_fraction: float = bounded(0.1, gt=0, lt=0.5)  # CIFAR / HF sets: held out of the training split
    amp: bool = True               # bf16 autocast for the LoRA training steps on CUDA; no-op on CPU
    seed: int = bounded(0, ge=0)

    def check(self) -> None:
        super().check()
        check(self.model == "tiny" or self.model.count("/") == 1, "model", f"expected tiny or ORG/NAME, got {self.model!r}")
        check(self.dataset in ("shapes", "cifar10", "cifar100") or self.dataset.startswith("hf-dataset:"), "dataset",
              f"expected shapes, cifar10, cifar100 or hf-dataset:ORG/NAME, got {self.dataset!r}")
        check(self.lora_targets in PRESETS, "lora_targets", f"expected one of {list(PRESETS)}, got {self.lora_targets!r}")


@dataclass(frozen=True)
class ClipData:
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]


# ---------------------------------------------------------------- data
def _few_shot(split: Split, shots: int, seed: int) -> Split:
    """`shots` images per class, the same ones for every trial (fixed permutation)."""
    if shots == 0:
        return split
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(split))).to(split.y.device)
    keep = torch.cat([order[split.y[order] == c][:shots] for c in torch.unique(split.y)])
    return Split(split.x[keep], split.y[keep])


def _cap(split: Split, n: int) -> Split:
    return split if n == 0 or n >= len(split) else Split(split.x[:n], split.y[:n])


def _hf_images(cfg: ClipConfig, data_dir: Path | None, size: int, device: torch.device) -> ClipData:
    """An HF image dataset: first Image column, first ClassLabel column, class names from its labels;
    validation held out of the training split, test = the 'test' (or 'validation'/'valid') split."""
    from datasets import ClassLabel, Image

    from ..hub import load_hf_dataset

    ds = load_hf_dataset(cfg.dataset, data_dir)
    features = ds["train"].features
    image_col = next(k for k, f in features.items() if isinstance(f, Image))
    label_col = next(k for k, f in features.items() if isinstance(f, ClassLabel))
    test_name = next(s for s in ("test", "validation", "valid") if s in ds)

    def arrays(split: Any) -> Split:
        x = np.stack([np.asarray(_square(img.convert("RGB"), size)) for img in split[image_col]]).transpose(0, 3, 1, 2)
        return Split(torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.tensor(split[label_col], device=device))

    train = ds["train"].shuffle(seed=12345)
    n_val = int(round(len(train) * cfg.val_fraction))
    val = train.select(range(min(n_val, cfg.max_eval or n_val)))
    rest = train.select(range(n_val, len(train)))
    test = ds[test_name].shuffle(seed=12345)
    test = test.select(range(min(len(test), cfg.max_eval or len(test))))
    labels = np.asarray(rest[label_col])  # few-shot selection before decoding: decode only what is used
    pick = np.concatenate([np.flatnonzero(labels == c)[:cfg.shots or len(labels)] for c in np.unique(labels)])
    names = tuple(n.replace("_", " ") for n in features[label_col].names)
    return ClipData(arrays(rest.select(pick)), arrays(val), arrays(test), names)


def _square(img: Any, size: int) -> Any:
    """Resize the shorter side to `size` and centre-crop (CLIP's preprocessing) with PIL."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), resample=3)  # 3 = bicubic
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_clip_data(cfg: ClipConfig, data_dir: Path | None, image_size: int, device: torch.device) -> ClipData:
    if cfg.dataset == "shapes":
        splits = {k: Split(*(t.to(device) for t in shapes_split(n, seed=20 + i)))
                  for i, (k, n) in enumerate(SHAPES_SIZES.items())}
        data = ClipData(splits["train"], splits["val"], splits["test"], SHAPE_CLASSES)
    elif cfg.dataset.startswith("hf-dataset:"):
        return _hf_images(cfg, data_dir, image_size, device)
    else:
        img = load_image_data(cfg.dataset, data_dir, device, val_fraction=cfg.val_fraction, seed=cfg.seed)
        names = CIFAR10 if cfg.dataset == "cifar10" else tuple(n.replace("~", " ") for n in CIFAR100)
        data = ClipData(img.train, img.val, img.test, names)
    return ClipData(_few_shot(data.train, cfg.shots, seed=777), _cap(data.val, cfg.max_eval),
                    _cap(data.test, cfg.max_eval), data.class_names)


def templates(cfg: ClipConfig) -> tuple[str, ...]:
    table = TEMPLATES["tiny" if cfg.model == "tiny" else "full"]
    return table if cfg.prompt == "ensemble" else table[:1]


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(head: PromptClassifier, split: Split, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted classes, normalised image embeddings) of a whole split, in eval mode."""
    head.eval()
    preds, embs = [], []
    for i in range(0, len(split), batch):
        emb = head.image_embeddings(split.x[i:i + batch])
        embs.append(F.normalize(emb, dim=-1))
        preds.append((embs[-1] @ head.class_embeddings().T).argmax(1))
    return torch.cat(preds), torch.cat(embs)


def accuracy_metrics(pred: torch.Tensor, y: torch.Tensor, prefix: str, names: Sequence[str] | None = None) -> dict[str, float]:
    """Top-1 accuracy, and with `names` the accuracy of each class as `{prefix}_acc/{name}`."""
    out = {f"{prefix}_acc": (pred == y).float().mean().item()}
    for c, name in enumerate(names or ()):
        mask = y == c
        if mask.any():
            out[f"{prefix}_acc/{name.replace(' ', '_')}"] = (pred[mask] == c).float().mean().item()
    return out


def linear_probe(head: PromptClassifier, data: ClipData, batch: int, suffix: str, test: bool = True
                 ) -> dict[str, float]:
    """Logistic regression on the normalised image embeddings of the training shots (scored on the
    test split only with `test`)."""
    from sklearn.linear_model import LogisticRegression

    scored = (("val", data.val), ("test", data.test)) if test else (("val", data.val),)
    feats = {name: predict(head, split, batch)[1].cpu().numpy()
             for name, split in (("train", data.train), *scored)}
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(feats["train"], data.train.y.cpu().numpy())
    return {f"{name}_acc_linear{suffix}": float(clf.score(feats[name], split.y.cpu().numpy())) for name, split in scored}


def train(cfg: ClipConfig, ctx: Context) -> dict[str, float]:
    return zero_shot(cfg, ctx) if cfg.method == "zeroshot" else lora(cfg, ctx)


def zero_shot(cfg: ClipConfig, ctx: Context) -> dict[str, float]:
    clip, tokenizer = load_clip(cfg.model, ctx.data_dir)
    data = load_clip_data(cfg, ctx.data_dir, int(clip.config.vision_config.image_size), ctx.device)
    head = PromptClassifier(clip, tokenizer, data.class_names, templates(cfg)).to(ctx.device)
    metrics: dict[str, float] = {"epoch": 1, "num_classes": len(data.class_names), "num_templates": head.num_templates}
    metrics.update(accuracy_metrics(predict(head, data.val, cfg.eval_batch)[0], data.val.y, "val"))
    files = {"config.json": json_bytes(asdict(cfg))}
    if ctx.evaluate_test:
        metrics.update(accuracy_metrics(predict(head, data.test, cfg.eval_batch)[0], data.test.y, "test",
                                        data.class_names))
        files["per_class.json"] = json_bytes({k.split("/", 1)[1]: v for k, v in metrics.items()
                                              if k.startswith("test_acc/")})
    ctx.report(metrics, files=files, final=True)
    return metrics


# ---------------------------------------------------------------- LoRA
def lora(cfg: ClipConfig, ctx: Context) -> dict[str, float]:
    torch.manual_seed(cfg.seed)  # LoRA A matrices: the same on every DDP rank and every retry
    clip, tokenizer = load_clip(cfg.model, ctx.data_dir)
    data = load_clip_data(cfg, ctx.data_dir, int(clip.config.vision_config.image_size), ctx.device)
    head = PromptClassifier(clip, tokenizer, data.class_names, templates(cfg)).to(ctx.device)
    before = accuracy_metrics(predict(head, data.val, cfg.eval_batch)[0], data.val.y, "val")
    if ctx.evaluate_test:
        before.update(accuracy_metrics(predict(head, data.test, cfg.eval_batch)[0], data.test.y, "test"))
    before = {f"{k}_before": v for k, v in before.items()}
    before.update(linear_probe(head, data, cfg.eval_batch, "_before", ctx.evaluate_test))
    peft_model = apply_lora(clip, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets,
                            dropout=cfg.lora_dropout, towers=cfg.lora_towers)
    counts = param_counts(peft_model)
    net = ctx.prepare_model(head)
    speed = Speed.for_model(head, ctx.device, amp=cfg.amp, channels_last=False)  # a ViT: NHWC buys nothing
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = -(-(len(data.train) // ctx.world_size) // cfg.batch_size)
    sched = make_scheduler(opt, "cosine", cfg.epochs * steps)
    start = 0
    if (state := ctx.restore()) is not None:
        head.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["epoch"]) + 1
    metrics: dict[str, float] = {}
    for epoch in range(start, cfg.epochs):
        train_loss, train_acc = train_one_epoch(net, opt, sched, data.train, batch_size=cfg.batch_size,
                                                seed=cfg.seed, epoch=epoch, rank=ctx.rank,
                                                world_size=ctx.world_size, speed=speed)
        pred = predict(head, data.val, cfg.eval_batch)[0]
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                   **accuracy_metrics(pred, data.val.y, "val"), "lr": sched.get_last_lr()[0], **counts}
        files, last = None, epoch + 1 == cfg.epochs
        if last and ctx.evaluate_test:  # the test set, once, for the adapted model
            pred = predict(head, data.test, cfg.eval_batch)[0]
            metrics.update(accuracy_metrics(pred, data.test.y, "test", data.class_names))
        if last:  # both heads, before/after
            metrics.update(before, **linear_probe(head, data, cfg.eval_batch, "", ctx.evaluate_test),
                           weights_digest=weights_digest(head), world_size=ctx.world_size)
            files = {"config.json": json_bytes(asdict(cfg))}
        state = {"model": trainable_state(head), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch, "config": asdict(cfg)}
        ctx.report(metrics, state=state, files=files, final=last)
    return metrics
