"""Adversarial training cost: one FGSM adversarial-training epoch (Lab 4 `adv-train`: FGSM with random
start, Wong et al. 2020) vs one clean epoch of the same model, data and batch size.

Two settings, both must pass: Lab 4's quick profile (digits, CNN width 16, 2 stages, batch 64,
mix 0.5: half of each batch adversarial) and the full profile's shape on CIFAR-sized random images
(3x32x32, batch 256, crop + flip, mix 1.0: every image adversarial) with a CPU-sized CNN in place of
ResNet-18. The adversarial epoch costs one extra forward and an input-only backward per attacked
image, so ~1.5x (mix 0.5) to ~2x (mix 1.0) is the floor. Goal: <= 2.2x.

    python benchmarks/adversarial.py [--quick]
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from common import Verdict, finish, interleaved, median, parser, repeats_of

import torch


def setting(name: str, quick: bool) -> tuple[Any, Any]:
    """(Lab4Config, ImageData) of one setting."""
    from trainables.data import ImageData, Split, load_image_data
    from trainables.lab4.robustness import Lab4Config

    if name == "quick profile (digits, mix 0.5)":
        from orchestrator.studies import get_study

        study = get_study("lab4", "adv-train")
        cfg = Lab4Config(**{**study.base_config("quick"), "epochs": 1})
        data = load_image_data(cfg.dataset, None, torch.device("cpu"), val_fraction=cfg.val_fraction)
        return cfg, data
    n = 1024 if quick else 4096
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    split = Split(x, y)
    data = ImageData("cifar10", split, split, split, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    cfg = Lab4Config(task="adv-train", dataset="cifar10", model="cnn", width=16, depth=1, num_stages=3, epochs=1,
                     batch_size=256, optimizer="sgd", lr=0.05, crop_pad=4, flip=True, mix=1.0, epsilon=8 / 255)
    return cfg, data


def epoch_timers(cfg: Any, data: Any) -> dict[str, Any]:
    """Two closures timing one clean and one adversarial epoch of the same model."""
    from trainables.lab4.robustness import adversarial_epoch, build_classifier
    from trainables.training import make_optimizer, make_scheduler, train_one_epoch

    torch.manual_seed(0)
    model = build_classifier(cfg, data)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    sched = make_scheduler(opt, "constant", 1)
    counter = iter(range(10_000))

    def clean() -> float:
        start = time.perf_counter()
        train_one_epoch(model, opt, sched, data.train, batch_size=cfg.batch_size, seed=cfg.seed, epoch=next(counter),
                        crop_pad=cfg.crop_pad, flip=cfg.flip)
        return time.perf_counter() - start

    def adversarial() -> float:
        start = time.perf_counter()
        adversarial_epoch(model, model, opt, sched, data.train, cfg, next(counter))
        return time.perf_counter() - start

    return {"clean": clean, "adversarial": adversarial}


def main(argv: Sequence[str] | None = None) -> Verdict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a 1-CPU trial)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[tuple[str, float, str]] = []
    ratios: dict[str, float] = {}
    runs: dict[str, Any] = {}
    for name in ("quick profile (digits, mix 0.5)", "CIFAR shape (3x32x32, batch 256, mix 1.0)"):
        cfg, data = setting(name, args.quick)
        timers = epoch_timers(cfg, data)
        for measure in timers.values():  # warm-up: first-call allocations, lazy inits
            measure()
        runs[name] = interleaved(timers, repeats_of(args, full=5))
        clean, adv = median(runs[name]["clean"]), median(runs[name]["adversarial"])
        ratios[name] = adv / clean
        rows += [(f"{name}: clean epoch", clean, "s"), (f"{name}: adversarial epoch", adv, "s"),
                 (f"{name}: ratio", adv / clean, "x")]
    worst = max(ratios, key=ratios.get)
    v = Verdict("adversarial training: FGSM-RS epoch vs clean epoch", ratios[worst],
                f"adversarial / clean epoch, worst setting ({worst})", "<=", 2.2, rows=rows,
                notes=[f"{len(runs[worst]['clean'])} interleaved repeats, medians; {args.threads} torch thread(s)"],
                extra={"runs": runs, "ratios": ratios})
    return finish(v, args)


if __name__ == "__main__":
    main()
