"""GPU benchmark (one CUDA device, no network, < 5 minutes): writes gpu.json into --out and prints a summary.

1. loader vs raw: Lab 1 models (the full profile's CNN, ResNet-18) trained through the project's
   loop and loader (`train_one_epoch` over a device-resident uint8 CIFAR-10-sized set, crop + flip)
   vs the same model and step on one fixed on-device batch (no data path at all). Goal >= 0.9.
2. ResNet-18 CIFAR-10 epoch (50,000 images, batch 256, SGD, crop + flip) with the defaults (bf16
   autocast + channels_last) and in fp32. Goal <= 1.2 s on an H100/H200.
3. packing: k = 1, 2, 4, 8 processes each training the small CNN on the same GPU at once (what
   Tune does with --gpus-per-trial 1/k), aggregate images/s vs one. Goal >= 1.4x for the small CNN.
4. transformers at real size from configs (no weights needed): DistilBERT-base (batch 32 x 64
   tokens: the quick sentiment config) full fine-tune and LoRA (qv, r 8); CLIP ViT-B/16 with LoRA
   (qkv, r 2, both towers: the quick clip-lora config) on 32x32 images upsampled to 224, 10 classes.
   Training steps/s, fp32 and bf16 autocast (Lab 3's default on CUDA).

Synthetic data of the real shapes; models from configs. CPU smoke test (seconds, tiny sizes):

    python benchmarks/gpu.py --device cpu --tiny --out /tmp/gpu-smoke
On a GPU machine (see benchmarks/README.md for installing on one without network):
    python benchmarks/gpu.py --out results/
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from common import machine

import torch
import torch.nn.functional as F

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Sizes:
    images: int = 50_000           # CIFAR-10 training set
    image: int = 32                # pixels per side
    batch: int = 256               # Lab 1 full profile
    repeats: int = 2               # best of this many timed runs
    raw_steps: int = 200           # fixed-batch steps for the raw throughput
    packing: tuple[int, ...] = (1, 2, 4, 8)
    window_s: float = 8.0          # packed processes train this long, all at once
    text_steps: int = 20
    tiny: bool = False


TINY = Sizes(images=64, image=8, batch=32, repeats=1, raw_steps=2, packing=(1, 2), window_s=0.5, text_steps=1,
             tiny=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- lab models, loader vs raw
def lab_model(name: str, device: torch.device, amp: bool, channels_last: bool, image: int = 32) -> tuple[Any, Any]:
    """(model on device, Speed): Lab 1's full-profile CNN or ResNet-18, CIFAR-10 shape."""
    from trainables.lab1.classifier import Lab1Config, build_model
    from trainables.training import Speed

    cfg = Lab1Config(model=name, dataset="cifar10", width=32, depth=2, residual=True, num_stages=3)
    torch.manual_seed(0)
    model = build_model(cfg, (3, image, image), 10, CIFAR_MEAN, CIFAR_STD)
    speed = Speed.for_model(model, device, amp=amp, channels_last=channels_last)
    return speed.prepare(model).to(device), speed


def cifar_split(n: int, device: torch.device, image: int = 32) -> Any:
    from trainables.data import Split

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, image, image), dtype=torch.uint8, generator=gen)
    return Split(x.to(device), torch.randint(0, 10, (n,), generator=gen).to(device))


def trainer(name: str, device: torch.device, sizes: Sizes, amp: bool = True, channels_last: bool = True,
            compile: str = "", fused: bool = True) -> dict[str, Callable[[], float]]:
    """Closures timing one loader epoch and `raw_steps` fixed-batch steps; both return images/s."""
    from trainables.training import make_optimizer, make_scheduler, train_one_epoch

    model, speed = lab_model(name, device, amp, channels_last, sizes.image)
    net = torch.compile(model, mode=None if compile == "default" else compile) if compile else model
    opt = (make_optimizer(net.parameters(), "sgd", 0.05, 5e-4, 0.9) if fused else  # fused on CUDA
           torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4))
    sched = make_scheduler(opt, "constant", 1)
    split = cifar_split(sizes.images, device, sizes.image)
    xb = torch.rand(sizes.batch, 3, sizes.image, sizes.image, device=device)
    yb = torch.randint(0, 10, (sizes.batch,), device=device)
    epochs = iter(range(1_000_000))

    def epoch() -> float:
        sync(device)
        start = time.perf_counter()
        train_one_epoch(net, opt, sched, split, batch_size=sizes.batch, seed=0, epoch=next(epochs), crop_pad=4,
                        flip=True, speed=speed)  # ends with .item(): synchronised
        return len(split) / (time.perf_counter() - start)

    def raw() -> float:
        net.train()
        sync(device)
        start = time.perf_counter()
        for _ in range(sizes.raw_steps):
            with speed.autocast():
                loss = F.cross_entropy(net(speed.input(xb)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        sync(device)
        return sizes.raw_steps * sizes.batch / (time.perf_counter() - start)

    return {"epoch": epoch, "raw": raw}


def loader_vs_raw(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("cnn", "resnet18"):
        t = trainer(name, device, sizes)
        t["raw"]()  # warm-up: kernels chosen, memory pools filled
        t["epoch"]()
        raw = max(t["raw"]() for _ in range(sizes.repeats))
        project = max(t["epoch"]() for _ in range(sizes.repeats))
        out[name] = {"raw_img_s": raw, "loader_img_s": project, "ratio": project / raw, "goal": ">= 0.9"}
    return out


def resnet_epoch(device: torch.device, sizes: Sizes, compile_modes: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    variants = {"bf16+channels_last": dict(amp=True, channels_last=True), "fp32": dict(amp=False, channels_last=False),
                "bf16+channels_last, unfused SGD": dict(amp=True, channels_last=True, fused=False)}
    for mode in compile_modes:
        variants[f"bf16+channels_last+compile({mode})"] = dict(amp=True, channels_last=True, compile=mode)
    for label, kwargs in variants.items():
        t = trainer("resnet18", device, sizes, **kwargs)
        t["epoch"]()  # warm-up (and compilation)
        rate = max(t["epoch"]() for _ in range(sizes.repeats))
        out[label] = {"epoch_s": sizes.images / rate, "img_s": rate}
    out["goal"] = "bf16+channels_last epoch_s <= 1.2 on H100/H200"
    return out


# ---------------------------------------------------------------- packing
def _packed(device_name: str, sizes: Sizes, barrier: Any, results: Any) -> None:
    """One packed 'trial': the small CNN through the project's loop, for window_s after the barrier."""
    torch.set_num_threads(1)
    from trainables.data import batches

    device = torch.device(device_name)
    model, speed = lab_model("cnn", device, True, True, sizes.image)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    split = cifar_split(sizes.images, device, sizes.image)

    def steps(seconds: float) -> int:
        seen, epoch, start = 0, 0, time.perf_counter()
        while True:
            for x, y in batches(split, sizes.batch, shuffle=True, seed=0, epoch=epoch, crop_pad=4, flip=True):
                with speed.autocast():
                    loss = F.cross_entropy(model(speed.input(x)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(y)
                if time.perf_counter() - start > seconds:
                    return seen
            epoch += 1

    model.train()
    steps(min(2.0, sizes.window_s))  # warm-up
    sync(device)
    barrier.wait(timeout=180)  # a sibling that died breaks the barrier instead of hanging us
    start = time.perf_counter()
    seen = steps(sizes.window_s)
    sync(device)
    results.put(seen / (time.perf_counter() - start))


def packing(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    out: dict[str, Any] = {}
    for k in sizes.packing:
        barrier, results = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=_packed, args=(str(device), sizes, barrier, results)) for _ in range(k)]
        for p in procs:
            p.start()
        try:
            rates = [results.get(timeout=240) for _ in range(k)]
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
        out[f"k={k}"] = {"aggregate_img_s": sum(rates), "per_trial_img_s": rates}
    one = out[f"k={sizes.packing[0]}"]["aggregate_img_s"]
    for k in sizes.packing:
        out[f"k={k}"]["vs_one"] = out[f"k={k}"]["aggregate_img_s"] / one
    out["goal"] = "best vs_one >= 1.4 (small CNN)"
    return out


# ---------------------------------------------------------------- transformers
def distilbert(device: torch.device, sizes: Sizes, lora: bool) -> Any:
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    # DistilBertConfig() is distilbert-base-uncased: dim 768, 6 layers, 12 heads, vocab 30,522. The
    # tiny one is trainables.lab3.text_models's (not imported: that module needs `datasets`, absent on GPU boxes).
    tiny = dict(vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64)
    config = DistilBertConfig(num_labels=2, **(tiny if sizes.tiny else {}))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    if lora:
        from trainables.lab3.lora import apply_lora

        model = apply_lora(model, rank=8, alpha=16.0, targets="qv", dropout=0.1)
    model = model.to(device)
    ids = torch.randint(5, config.vocab_size, (32, 64), device=device)  # 32 texts x 64 tokens
    labels = torch.randint(0, 2, (32,), device=device)
    return model, lambda m: m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss


def clip(device: torch.device, sizes: Sizes, lora: bool) -> Any:
    from transformers import CLIPConfig, CLIPModel

    from trainables.lab3.clip_models import SHAPE_CLASSES, PromptClassifier, tiny_clip_config, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    if sizes.tiny:
        config = tiny_clip_config(len(tokenizer))
    else:  # openai/clip-vit-base-patch16's sizes; special token ids of the offline tokenizer
        text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                    num_attention_heads=8, max_position_embeddings=77, pad_token_id=0, bos_token_id=2, eos_token_id=3)
        vision = dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, num_channels=3)
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
    torch.manual_seed(0)
    model = CLIPModel(config)
    # 10 prompts the offline tokenizer knows word for word (distinct class embeddings, real gradients)
    head = PromptClassifier(model, tokenizer, SHAPE_CLASSES[:10], ["a photo of a {}."])
    if lora:
        from trainables.lab3.lora import apply_lora

        apply_lora(model, rank=2, alpha=4.0, targets="qkv", towers="both")
    head = head.to(device)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, device=device)  # CIFAR, resized inside
    labels = torch.randint(0, 10, (32,), device=device)
    return head, lambda m: F.cross_entropy(m(images), labels)


def steps_per_s(build: Callable[..., Any], device: torch.device, sizes: Sizes, lora: bool) -> dict[str, float]:
    """Training steps/s (AdamW on what trains) of one model, in fp32 and under bf16 autocast."""
    from trainables.training import autocast_context

    model, loss_of = build(device, sizes, lora)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    out: dict[str, float] = {}
    for precision, amp in (("fp32", False), ("bf16", True)):
        def step() -> None:
            with autocast_context(device, amp):
                loss = loss_of(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(2):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(sizes.text_steps):
            step()
        sync(device)
        out[precision] = sizes.text_steps / (time.perf_counter() - start)
    return out


def transformers_steps(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cases = {"distilbert-base finetune": (distilbert, False), "distilbert-base lora-qv-r8": (distilbert, True),
             "clip-vit-b16 lora-qkv-r2": (clip, True)}
    for label, (build, lora) in cases.items():
        out[label] = {**steps_per_s(build, device, sizes, lora), "batch": 32}
    return out


# ---------------------------------------------------------------- main
SECTIONS: dict[str, Callable[[torch.device, Sizes, argparse.Namespace], dict[str, Any]]] = {
    "loader_vs_raw": lambda d, s, a: loader_vs_raw(d, s),
    "resnet18_epoch": lambda d, s, a: resnet_epoch(d, s, a.compile or []),
    "packing": lambda d, s, a: packing(d, s),
    "transformers": lambda d, s, a: transformers_steps(d, s),
}


def summary(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, r in results.get("loader_vs_raw", {}).items():
        if isinstance(r, dict) and "ratio" in r:
            lines.append(f"{name}: loader {r['loader_img_s']:,.0f} img/s vs raw {r['raw_img_s']:,.0f} -> ratio "
                         f"{r['ratio']:.2f} (goal >= 0.9)")
    r = results.get("resnet18_epoch", {})
    if "bf16+channels_last" in r:
        lines.append("resnet18 epoch (goal <= 1.2 s): " + ", ".join(
            f"{label} {v['epoch_s']:.2f} s" for label, v in r.items() if isinstance(v, dict) and "epoch_s" in v))
    r = results.get("packing", {})
    ks = [k for k in r if k.startswith("k=")]
    if ks:
        lines.append("packing vs one: " + ", ".join(f"{k} {r[k]['vs_one']:.2f}x" for k in ks) + " (goal >= 1.4x)")
    for name, r in results.get("transformers", {}).items():
        if isinstance(r, dict) and "fp32" in r:
            lines.append(f"{name}: {r['fp32']:.2f} steps/s fp32, {r['bf16']:.2f} bf16 (batch 32)")
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu.json")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: a smoke test)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: seconds, for checking the script itself")
    p.add_argument("--only", action="append", choices=list(SECTIONS), help="run only these sections")
    p.add_argument("--compile", action="append", choices=["default", "reduce-overhead", "max-autotune"],
                   help="also time ResNet-18 under torch.compile in this mode (repeatable; ~1 min each)")
    p.add_argument("--text-steps", type=int, default=0, help="timed steps per transformer case (default 20)")
    p.add_argument("--budget-s", type=float, default=270, help="skip the sections left once this is spent")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: use --device cpu --tiny for a smoke test")
    if device.type == "cpu":
        torch.set_num_threads(1)  # a smoke test on a shared machine: more threads only thrash
    sizes = TINY if args.tiny else Sizes()
    if args.text_steps:
        sizes = replace(sizes, text_steps=args.text_steps)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "device": str(device), "sizes": asdict(sizes)}
    start = time.perf_counter()
    for name in args.only or list(SECTIONS):
        if time.perf_counter() - start > args.budget_s:
            results[name] = {"skipped": f"over the {args.budget_s:.0f} s budget"}
            continue
        t = time.perf_counter()
        try:
            results[name] = SECTIONS[name](device, sizes, args)
        except Exception:  # one broken section must not lose the others' numbers
            results[name] = {"error": traceback.format_exc(limit=5)}
        results[name]["seconds"] = time.perf_counter() - t
        (args.out / "gpu.json").write_text(json.dumps(results, indent=2, default=str))  # partial results survive
    results["total_s"] = time.perf_counter() - start
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"== gpu benchmark on {results['machine'].get('gpu', device)} ({results['total_s']:.0f} s)"
          f"{' -- TINY SIZES: checks the script, the numbers mean nothing' if sizes.tiny else ''} ==")
    for line in summary(results):
        print("  " + line)
    for name in SECTIONS:
        if isinstance(results.get(name), dict) and "error" in results[name]:
            print(f"  {name}: ERROR\n{results[name]['error']}")
    print(f"results: {args.out / 'gpu.json'}")
    return results


if __name__ == "__main__":
    main()
