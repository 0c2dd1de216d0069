"""Lab 4: OOD detection and adversarial robustness (FGSM, PGD, adversarial training, targeted attacks).

One config, the task a field of it:
  train      the classifier and its autoencoder, plainly: the model the post-hoc tasks below probe
  ood        classifier (+ autoencoder) on the ID set; OOD scores and detection metrics
  fgsm       classifier; accuracy vs FGSM eps, single-step and iterative attacks
  adv-train  classifier trained on FGSM-with-random-start examples (Wong et al. 2020); robustness
             to FGSM and PGD, the OOD metrics of the robust model; early stop on catastrophic overfitting
  targeted   classifier; iterative targeted FGSM toward `target`

Every eps is an L-inf radius in pixel units of [0, 1]: the literature's "8/255" is 0.0314.

In-process:  python -c "from trainables.lab4.robustness import *; from trainables.context import LocalContext;
                        print(train(Lab4Config(task='fgsm', eps_grid=(0, 0.1, 0.2)), LocalContext()))"
Through the orchestrator: python orchestrator/run.py lab4 --study fgsm
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import bounded, check, from_dict
from ..context import Context, LocalContext, json_bytes
from ..data import ImageData, Split, batches, to_float
from ..models import build_model
from ..recipe import ImageRecipe, Model, load_data
from ..training import (Perturb, Speed, evaluate, make_optimizer, make_scheduler, train_and_validate, train_one_epoch,
                       training_net, weights_digest)
from . import evaluation, shared
from .attacks import fgsm, fgsm_rs, pgd
from .ood import ConvAutoencoder

Task = Literal["train", "ood", "fgsm", "adv-train", "targeted"]
OodSet = Literal["heldout", "noise", "fakedata", "cifar100", "svhn"]
Score = Literal["msp", "msp_t", "maxlogit", "energy", "odin", "ae"]
CIFAR_GRID = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)


PIXELS = "pixel units"


@dataclass(frozen=True)
class Lab4Config(ImageRecipe):
    """The image recipe (trainables/recipe.py: data, training, the classifier) with Lab 4's defaults,
    plus the task, its OOD scores, attacks and adversarial training."""

    task: Task = "fgsm"
    # the recipe's fields that Lab 4 narrows or sets otherwise
    dataset: Literal["digits", "mnist", "cifar10", "synthetic"] = "digits"  # in-distribution data
    classes: tuple[int, ...] = bounded((), ge=0, le=9)  # ID labels kept (relabelled 0..k-1); () = all
    model: Model = "cnn"
    width: int = 16                    # MLP hidden units / CNN channels of the first stage
    depth: int = 1                     # MLP blocks / CNN blocks per stage
    residual: bool = True
    num_stages: int = 2
    batch_size: int = 64               # images per step
    lr: float = 3e-3
    val_fraction: float = 0.15         # of the training set, held out for selection
    # (amp, channels_last, compile: training steps and validation only; attacks, ODIN and the final
    # evaluation stay fp32: gradients w.r.t. inputs at eps = 1/255 are what they measure)
    ood_set: OodSet = "noise"          # heldout = the ID dataset's other classes
    # OOD scores
    score: Score = "odin"              # its validation AUROC is `val_auroc`, the ood study's target
    temperature: float = bounded(1000.0, gt=0)  # T of msp_t and odin
    odin_eps: float = bounded(0.0014, ge=0, le=1, note=PIXELS)  # ODIN input step
    ae_width: int = bounded(16, ge=1)  # autoencoder channels (first conv)
    ae_latent: int = bounded(16, ge=1)  # autoencoder bottleneck size
    ae_lr: float = bounded(3e-3, gt=0)
    # attacks (pixel units of [0, 1])
    # FGSM / PGD radius, adversarial-training radius, targeted budget
    epsilon: float = bounded(8 / 255, ge=0, le=1, note=f"{PIXELS}; 8/255 = 0.0314")
    eps_grid: tuple[float, ...] = bounded(CIFAR_GRID, ge=0, le=1, note=PIXELS)  # accuracy-vs-eps grid
    attack_step: float = bounded(1 / 255, gt=0, le=1, note=PIXELS)  # step of iterative FGSM
    attack_steps: int = bounded(50, ge=1)  # step budget of iterative FGSM
    target: int = bounded(0, ge=0)     # class of the targeted attack (below the classes kept: checked in train)
    max_eval: int = bounded(1000, ge=0)  # test images attacked (0 = all)
    # adversarial training
    mix: float = bounded(0.5, ge=0, le=1)  # fraction of each batch replaced by adversarial images (0 = standard)
    alpha_ratio: float = bounded(1.25, gt=0)  # FGSM-RS step = alpha_ratio * epsilon (Wong et al.)
    random_start: bool = True          # False (with alpha_ratio=1): plain FGSM training, the CO-prone baseline
    pgd_steps: int = bounded(10, ge=1)  # PGD steps of the evaluation attack (step 2.5 * eps / steps)
    eval_eps: float = bounded(8 / 255, gt=0, le=1, note=PIXELS)  # adv-train's threat model: PGD accuracy at this eps
    co_ratio: float = bounded(0.5, gt=0, lt=1)  # PGD acc below co_ratio x its best = catastrophic overfitting
    co_gap: float = bounded(0.3, gt=0, le=1)  # ... or FGSM acc - PGD acc above this (on the probe batch)
    co_batch: int = bounded(256, ge=1)  # fixed validation images of the per-epoch PGD check
    # the trained model a post-hoc task (ood, fgsm, targeted) probes (trainables/lab4/shared.py)
    source_run: str = ""               # MLflow run id (--set source_run=...); the driver resolves it
    source_checkpoint: str = ""        # absolute path of that run's model.pt, filled in by the driver
    source_cache: str = ""             # folder shared by the study's trials (driver-set): the first trial
                                       # to need the model trains it there, the others load it

    def check(self) -> None:
        super().check()
        check(len(self.eps_grid) >= 1, "eps_grid", "needs at least one value")
        check(list(self.eps_grid) == sorted(set(self.eps_grid)), "eps_grid", "must be increasing, without repeats")
        check(self.ood_set != "heldout" or 0 < len(self.classes) < 10, "ood_set",
              "heldout needs `classes` to keep some labels out (e.g. classes=0,1,2,3,4)")
        check(self.ood_set not in ("cifar100", "svhn") or self.dataset == "cifar10", "ood_set",
              f"{self.ood_set} is an OOD set for CIFAR-10 (3x32x32) only, not {self.dataset}")
        check(self.source_run == "" or self.source_run.strip() == self.source_run, "source_run",
              "must be a run id without spaces")
        check(not (self.source_run or self.source_checkpoint) or self.task in shared.POST_HOC, "source_run",
              f"only the post-hoc tasks ({', '.join(shared.POST_HOC)}) probe a given model; {self.task} trains its own")


def build_classifier(cfg: Lab4Config, data: ImageData) -> nn.Module:
    return build_model(cfg, data.shape, data.num_classes, data.mean, data.std)


# ---------------------------------------------------------------------------------------- epochs
def adversarial_mix(model: nn.Module, cfg: Lab4Config, gen: torch.Generator) -> Perturb:
    """A batch perturbation for the training loop: the first round(mix * B) images of every batch
    replaced by FGSM-RS examples made against the current weights. The attack runs on the unwrapped
    `model` (same weights): a forward pass through DDP that is not followed by a parameter backward
    would leave its gradient reducer waiting."""

    def mix_in_adversarial(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = round(cfg.mix * len(y))
        if not k or cfg.epsilon <= 0:
            return x
        adv = fgsm_rs(model, x[:k], y[:k], cfg.epsilon, alpha_ratio=cfg.alpha_ratio,
                      random_start=cfg.random_start, gen=gen)
        return torch.cat([adv, x[k:]])

    return mix_in_adversarial


def attack_generator(cfg: Lab4Config, split: Split, epoch: int, rank: int) -> torch.Generator:
    """The attack's random starts: seeded per epoch and rank, apart from the batch order's generator."""
    return torch.Generator(device=split.x.device).manual_seed(cfg.seed * 7919 + epoch * 1009 + rank)


def adversarial_epoch(net: nn.Module, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, split: Split,
                      cfg: Lab4Config, epoch: int, rank: int = 0, world_size: int = 1,
                      speed: Speed = Speed()) -> tuple[float, float]:
    """One FGSM-RS adversarial-training epoch on `split`; returns (loss, accuracy)."""
    return train_one_epoch(net, opt, sched, split, batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch,
                           crop_pad=cfg.crop_pad, flip=cfg.flip, rank=rank, world_size=world_size, speed=speed,
                           perturb=adversarial_mix(model, cfg, attack_generator(cfg, split, epoch, rank)))


def autoencoder_epoch(ae: nn.Module, opt: torch.optim.Optimizer, split: Split, cfg: Lab4Config, epoch: int) -> float:
    """One epoch of pixel-space MSE reconstruction; returns the mean training loss."""
    ae.train()
    total, seen = torch.zeros((), device=split.x.device), 0
    for x, _ in batches(split, cfg.batch_size, shuffle=True, seed=cfg.seed + 1, epoch=epoch):
        loss = F.mse_loss(ae(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(x)  # on the device: no host sync per batch
        seen += len(x)
    return (total / max(seen, 1)).item()


@torch.no_grad()
def reconstruction_loss(ae: nn.Module, split: Split) -> float:
    ae.eval()
    x = to_float(split.x)
    return F.mse_loss(ae(x), x).item()


def robustness_probe(model: nn.Module, probe: tuple[torch.Tensor, torch.Tensor], cfg: Lab4Config) -> dict[str, float]:
    """On a fixed validation batch: FGSM and PGD accuracy at the training eps (FGSM accuracy rising
    while PGD accuracy collapses is catastrophic overfitting), and `val_robust_acc`, PGD accuracy
    at the fixed threat model `eval_eps`: adv-train's target, comparable across training eps."""
    model.eval()
    x, y = probe

    def pgd_accuracy(eps: float) -> float:
        return accuracy(pgd(model, x, y, eps, steps=cfg.pgd_steps, seed=cfg.seed))

    def accuracy(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y).float().mean().item()

    at_train = pgd_accuracy(cfg.epsilon)
    return {"val_fgsm_acc": accuracy(fgsm(model, x, y, cfg.epsilon)), "val_pgd_acc": at_train,
            "val_robust_acc": at_train if cfg.eval_eps == cfg.epsilon else pgd_accuracy(cfg.eval_eps)}


def collapsed(probe: dict[str, float], best_pgd: float, cfg: Lab4Config, floor: float = 0.1) -> bool:
    """Catastrophic overfitting (Wong et al. 2020), seen on the fixed validation batch either way:
    PGD accuracy fell below `co_ratio` x its best so far, once that best was meaningful (>= floor;
    below it a drop is sampling noise), or the model resists FGSM far better than PGD (accuracy gap
    > `co_gap`): it has overfitted to the single-step attack instead of becoming robust."""
    pgd_acc, fgsm_acc = probe["val_pgd_acc"], probe["val_fgsm_acc"]
    return (best_pgd >= floor and pgd_acc < cfg.co_ratio * best_pgd) or fgsm_acc - pgd_acc > cfg.co_gap


# ---------------------------------------------------------------------------------------- the trainable
@dataclass
class Models:
    """What one trial trains and checkpoints: the classifier, and for `ood` the autoencoder."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    speed: Speed = Speed()
    ae: nn.Module | None = None
    ae_opt: torch.optim.Optimizer | None = None
    best_pgd: float = -1.0                      # adv-train: best probe PGD accuracy so far ...
    best_epoch: int = 0                         # ... its epoch (1-based) ...
    best_weights: dict[str, Any] | None = None  # ... and its weights (restored on catastrophic overfitting)

    def state(self, epoch: int, cfg: Lab4Config) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "epoch": epoch, "config": asdict(cfg),
                 "best_pgd": self.best_pgd, "best_epoch": self.best_epoch}
        if self.best_weights is not None:
            state["best_model"] = self.best_weights
        if self.ae is not None:
            state.update(ae=self.ae.state_dict(), ae_optimizer=self.ae_opt.state_dict())
        return state

    def load(self, state: dict[str, Any]) -> int:
        """Restores a checkpoint; returns the epoch to continue from."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.ae is not None:
            self.ae.load_state_dict(state["ae"])
            self.ae_opt.load_state_dict(state["ae_optimizer"])
        self.best_pgd, self.best_epoch = float(state["best_pgd"]), int(state["best_epoch"])
        self.best_weights = state.get("best_model")
        return int(state["epoch"]) + 1


def build(cfg: Lab4Config, ctx: Context, data: ImageData) -> tuple[Models, nn.Module]:
    """(models, net): net is the classifier as prepared by the context (what trains)."""
    model = build_classifier(cfg, data)
    net, speed = training_net(model, ctx, cfg)
    opt = make_optimizer(net.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    steps = -(-(len(data.train) // ctx.world_size) // cfg.batch_size)  # per epoch, on this rank's shard
    sched = make_scheduler(opt, cfg.schedule, cfg.epochs * steps)
    models = Models(model, opt, sched, speed)
    if shared.needs_autoencoder(cfg.task):
        models.ae = ConvAutoencoder(data.shape, cfg.ae_width, cfg.ae_latent).to(ctx.device)
        models.ae_opt = torch.optim.Adam(models.ae.parameters(), lr=cfg.ae_lr)
    return models, net


def run_epoch(cfg: Lab4Config, ctx: Context, m: Models, net: nn.Module, data: ImageData, epoch: int
              ) -> dict[str, float]:
    """One training epoch (this rank's shard under DDP) and validation; the autoencoder is not
    DDP-wrapped: every rank trains the same one on the same batches."""
    perturb = (adversarial_mix(m.model, cfg, attack_generator(cfg, data.train, epoch, ctx.rank))
               if cfg.task == "adv-train" else None)
    metrics = train_and_validate(net, m.opt, m.sched, data, cfg, ctx, epoch, m.speed, perturb)
    if m.ae is not None:
        metrics["ae_train_loss"] = autoencoder_epoch(m.ae, m.ae_opt, data.train, cfg, epoch)
        metrics["ae_val_loss"] = reconstruction_loss(m.ae, data.val)
    return metrics


def check_overfitting(cfg: Lab4Config, m: Models, probe: tuple[torch.Tensor, torch.Tensor], epoch: int
                      ) -> tuple[dict[str, float], bool]:
    """adv-train: probe FGSM/PGD accuracy, remember the best-PGD weights; True = catastrophic overfitting."""
    probed = robustness_probe(m.model, probe, cfg)
    stop = cfg.mix > 0 and cfg.epsilon > 0 and collapsed(probed, m.best_pgd, cfg)
    if probed["val_pgd_acc"] > m.best_pgd:
        m.best_pgd, m.best_epoch = probed["val_pgd_acc"], epoch + 1
        m.best_weights = copy.deepcopy(m.model.state_dict())
    return probed, stop


def train(cfg: Lab4Config, ctx: Context) -> dict[str, float]:
    """train / adv-train: trains the classifier (train: and the autoencoder), reporting per-epoch
    metrics with a checkpoint; after the last epoch (or adv-train's catastrophic-overfitting stop) runs
    the evaluation and reports it once, with its figures and JSON files. The post-hoc tasks probe a
    model trained once for their study (`probe`)."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, ctx)
    if cfg.task == "targeted":
        check(cfg.target < data.num_classes, "target", f"must be < {data.num_classes} classes, got {cfg.target}")
    if cfg.task in shared.POST_HOC:
        return probe(cfg, ctx, data)
    m, net = build(cfg, ctx, data)
    start = m.load(state) if (state := ctx.restore()) is not None else 0
    adversarial = cfg.task == "adv-train"
    probe_batch = (to_float(data.val.x[:cfg.co_batch]), data.val.y[:cfg.co_batch])
    ood = evaluation.load_ood(cfg, ctx, data) if adversarial and ctx.evaluate_test else None

    metrics: dict[str, float] = {}
    for epoch in range(start, cfg.epochs):
        metrics = run_epoch(cfg, ctx, m, net, data, epoch)
        stop = False
        if adversarial:
            probed, stop = check_overfitting(cfg, m, probe_batch, epoch)
            metrics.update(probed)
        files, last = None, stop or epoch + 1 == cfg.epochs
        if last:
            if stop:  # Wong et al.'s remedy: keep the weights of the best PGD epoch
                m.model.load_state_dict(m.best_weights)
            final, files = final_evaluation(cfg, m.model, m.ae, data, ood) if ctx.evaluate_test else ({}, {})
            metrics.update(final, weights_digest=weights_digest(m.model))
            if adversarial:
                metrics.update(catastrophic_overfit=float(stop), co_epoch=float(epoch + 1 if stop else 0),
                               best_pgd_epoch=float(m.best_epoch))
            files["config.json"] = json_bytes(asdict(cfg))
        ctx.report(metrics, state=m.state(epoch, cfg), files=files, final=last)
        if stop:
            break
    return metrics


# ---------------------------------------------------------------------------------------- post-hoc tasks
def fit_model(cfg: Lab4Config, ctx: Context, data: ImageData, partial: Path | None
              ) -> tuple[nn.Module, nn.Module | None, dict[str, float]]:
    """Trains what a post-hoc task probes (the classifier, and for `ood` the autoencoder) on one
    device, exactly as the old train-then-probe trial did; checkpoints each epoch to `partial` (when
    given) and resumes from it. Returns (classifier, autoencoder, last-epoch metrics)."""
    inner = LocalContext(device=ctx.device, data_dir=ctx.data_dir)
    m, net = build(cfg, inner, data)
    start, metrics = 0, {}
    if partial is not None and partial.is_file():
        saved = torch.load(partial, map_location="cpu", weights_only=True)
        start, metrics = m.load(saved), dict(saved["metrics"])
    for epoch in range(start, cfg.epochs):
        metrics = run_epoch(cfg, inner, m, net, data, epoch)
        if partial is not None:
            tmp = partial.with_name(f".{partial.name}.{os.getpid()}.tmp")
            torch.save({**m.state(epoch, cfg), "metrics": metrics}, tmp)
            os.replace(tmp, partial)  # atomic: a kill leaves the previous epoch's file whole
    return m.model, m.ae, metrics


def probe(cfg: Lab4Config, ctx: Context, data: ImageData) -> dict[str, float]:
    """A post-hoc trial: obtains its study's trained model (shared.obtain: given, shared or trained
    here), runs the task's evaluation for this trial's knobs and reports once. Only the trial that
    trained the model checkpoints it (its MLflow run keeps the model; the others name it)."""
    def build_untrained(c: Lab4Config) -> tuple[nn.Module, nn.Module | None]:
        m, _ = build(c, LocalContext(device=ctx.device, data_dir=ctx.data_dir), data)
        return m.model, m.ae

    trained = shared.obtain(cfg, data, build_untrained,
                            lambda c, partial: fit_model(c, ctx, data, partial))
    model, ae = trained.model.to(ctx.device), trained.ae.to(ctx.device) if trained.ae is not None else None
    ood = evaluation.load_ood(cfg, ctx, data) if cfg.task == "ood" else None
    metrics = dict(trained.metrics)
    if cfg.task == "ood":
        metrics.update(evaluation.val_auroc(cfg, model, ae, data, ood))
    else:
        metrics.update(evaluation.val_attack(cfg, model, data))
    final, files = final_evaluation(cfg, model, ae, data, ood) if ctx.evaluate_test else ({}, {})
    metrics.update(final, weights_digest=weights_digest(model))
    files["config.json"] = json_bytes(asdict(cfg))
    files["probed_model.json"] = json_bytes({"model": trained.name, "trained_here": trained.trained_here,
                                             "digest": shared.digest(cfg)})
    state = None
    if trained.trained_here:
        state = {"model": model.state_dict(), "config": asdict(cfg), **({"ae": ae.state_dict()} if ae else {})}
    ctx.report(metrics, state=state, files=files, final=True)
    return metrics


def load_probed(path: str) -> tuple[Lab4Config, dict[str, Any]]:
    """A saved model a post-hoc study could probe: (its config, the checkpoint) (orchestrator.sources)."""
    ckpt = shared.read(path)
    return shared.saved_config(ckpt, Lab4Config), ckpt


def probed_conflict(saved: Lab4Config, ckpt: dict[str, Any], base: Mapping[str, Any]) -> str | None:
    """Why the study configured as `base` cannot probe this saved model, or None."""
    return shared.conflict(saved, ckpt, from_dict(Lab4Config, dict(base)))


def final_evaluation(cfg: Lab4Config, model: nn.Module, ae: nn.Module | None, data: ImageData,
                     ood: evaluation.OodImages | None) -> tuple[dict[str, float], dict[str, bytes]]:
    """Test metrics of the finished model plus the task's evaluation, and the files it made: all on
    the test split, so only with `ctx.evaluate_test` (a study's search selects on validation)."""
    test_loss, test_acc = evaluate(model, data.test)
    out = {"test_loss": test_loss, "test_acc": test_acc}
    if cfg.task == "ood":
        metrics, files = evaluation.ood_evaluation(cfg, model, ae, data, ood)
    elif cfg.task == "fgsm":
        metrics, files = evaluation.fgsm_study(cfg, model, data)
    elif cfg.task == "targeted":
        metrics, files = evaluation.targeted_study(cfg, model, data)
    elif cfg.task == "train":
        metrics, files = ({"ae_test_loss": reconstruction_loss(ae, data.test)} if ae is not None else {}), {}
    else:
        metrics, files = evaluation.robustness_study(cfg, model, data, ood)
    return {**out, **metrics}, files
