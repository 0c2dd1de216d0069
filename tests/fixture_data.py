"""Offline stand-ins for everything the `full` profile reads from --data-dir, in the real on-disk layouts.

    python -m tests.fixture_data DIR [--images-per-class 4] [--seed 0] [--only mnist cifar10 ...]

Few images at the real sizes (MNIST 1x28x28, CIFAR/SVHN 3x32x32), written in the files the real
loaders read, so the project's own loaders run unchanged on them:
  mnist     DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte      (idx, what torchvision.MNIST reads)
  cifar10   DIR/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (pickles, rows of 3*32*32 uint8)
  cifar100  DIR/cifar-100-python/{train,test,meta}                           (fine + coarse labels)
  svhn      DIR/{train,test}_32x32.mat           (X (32,32,3,N) uint8, y (N,1) in 1..10, 10 = digit 0)
  hf-dataset:cornell-movie-review-data/rotten_tomatoes, hf-model:distilbert/..., hf-model:openai/clip-...
            DIR/huggingface/hub/{datasets,models}--ORG--NAME/{blobs,snapshots/<commit>,refs/main}: the Hub
            cache that trainables/hub.py reads, with the files the real repositories hold (parquet splits +
            README; config.json + model.safetensors + tokenizer files; CLIP's preprocessor_config.json).
Every image is a class template (a seeded 4x4 colour grid, blown up) plus noise: separable from a few
images per class (nearest class mean on raw pixels: >= 90% on CIFAR-10's test split). The checkpoints are the real architectures (DistilBertForMaskedLM, CLIPModel with ViT-B/16
or /32 patches on 224-pixel inputs) at tiny widths, with random weights and real tokenizers
(WordPiece; byte-level BPE) over tiny vocabularies. (The real openai/clip-* repositories hold
pytorch_model.bin; these hold model.safetensors, what trainables/hub.py's patterns fetch.)

The md5 bypass. torchvision checks the md5 of the real CIFAR/SVHN files when it opens them and of
every archive it downloads; a fixture cannot match those. `skip_md5()` replaces `check_integrity`
(isfile and md5) by its isfile half in exactly the modules that pass it an md5:
torchvision.datasets.cifar (`CIFAR10._check_integrity`, `_load_meta`), .svhn (`SVHN._check_integrity`)
and .utils (`download_url`, after a download). MNIST passes no md5 when it opens files: untouched.
A trial runs in another process: tests/md5_bypass/sitecustomize.py installs the same bypass
(`install_md5_bypass`) in every Python process of a `run.py` started with that folder on PYTHONPATH
and DLA_TEST_SKIP_MD5=1, its Ray workers included (tests/test_full_profile.py); in-process code runs
inside `with skip_md5():`.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

ROTTEN = "hf-dataset:cornell-movie-review-data/rotten_tomatoes"
DISTILBERT = "hf-model:distilbert/distilbert-base-uncased"
CLIP_B16, CLIP_B32 = "hf-model:openai/clip-vit-base-patch16", "hf-model:openai/clip-vit-base-patch32"
ASSETS = ("mnist", "cifar10", "cifar100", "svhn", ROTTEN, DISTILBERT, CLIP_B16, CLIP_B32)
CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()
CIFAR100_NAMES = (  # the real meta's fine_label_names, in label order
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2").split()


# ---------------------------------------------------------------- images
def images(classes: int, per_class: int, shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) and int64 labels, shuffled: 75% a seeded per-class 4x4 grid (nearest-upsampled),
    25% per-image noise, so classes are separable yet no two images are equal."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    templates = rng.random((classes, c, 4, 4))
    y = rng.permutation(np.repeat(np.arange(classes), per_class))
    x = np.kron(templates[y], np.ones((1, 1, h // 4, w // 4))) * 0.75 + rng.random((len(y), c, h, w)) * 0.25
    return (x * 255).round().astype(np.uint8), y.astype(np.int64)


def splits(classes: int, per_class: int, shape: tuple[int, int, int], seed: int) -> tuple[tuple, tuple]:
    """(train, test) drawn together so both splits share the class templates."""
    x, y = images(classes, 2 * per_class, shape, seed)
    first = np.concatenate([np.flatnonzero(y == k)[:per_class] for k in range(classes)])
    train = np.isin(np.arange(len(y)), first)
    return (x[train], y[train]), (x[~train], y[~train])


def write_mnist(root: Path, per_class: int, seed: int) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, (x, y) in zip(("train", "t10k"), splits(10, per_class, (1, 28, 28), seed)):
        for kind, array in (("images-idx3", x[:, 0]), ("labels-idx1", y.astype(np.uint8))):
            # idx: magic 0x00000800 | ndim (0x08 = unsigned byte), one big-endian int32 per dimension, data
            header = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())
    return raw


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real files are Python 2 pickles; torchvision reads with latin1


def write_cifar10(root: Path, per_class: int, seed: int) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    (x, y), (xt, yt) = splits(10, per_class, (3, 32, 32), seed)
    parts = [(f"data_batch_{i + 1}", f"training batch {i + 1} of 5", idx)
             for i, idx in enumerate(np.array_split(np.arange(len(y)), 5))]
    for name, label, idx in parts + [("test_batch", "testing batch 1 of 1", None)]:
        xs, ys = (x[idx], y[idx]) if idx is not None else (xt, yt)
        _pickle(folder / name, {"batch_label": label, "labels": ys.tolist(), "data": xs.reshape(-1, 3072),
                                "filenames": [f"{name}_{i}.png" for i in range(len(ys))]})
    _pickle(folder / "batches.meta", {"num_cases_per_batch": len(parts[0][2]), "label_names": CIFAR10_NAMES,
                                      "num_vis": 3072})
    return folder


def write_cifar100(root: Path, per_class: int, seed: int) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in zip(("train", "test"), splits(100, per_class, (3, 32, 32), seed)):
        # coarse = fine // 5 is not CIFAR-100's real grouping; nothing here reads coarse labels
        _pickle(folder / name, {"batch_label": f"{name}ing batch 1 of 1", "fine_labels": y.tolist(),
                                "coarse_labels": (y // 5).tolist(), "data": x.reshape(-1, 3072),
                                "filenames": [f"{name}_{i}.png" for i in range(len(y))]})
    _pickle(folder / "meta", {"fine_label_names": CIFAR100_NAMES, "coarse_label_names": CIFAR100_COARSE})
    return folder


def write_svhn(root: Path, per_class: int, seed: int) -> Path:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in zip(("train", "test"), splits(10, per_class, (3, 32, 32), seed)):
        labels = np.where(y == 0, 10, y).astype(np.uint8)[:, None]  # SVHN's .mat files store digit 0 as 10
        savemat(root / f"{name}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": labels})  # NCHW -> HWCN
    return root


# ---------------------------------------------------------------- Hugging Face Hub cache
def publish(data_dir: Path, name: str, write: Callable[[Path], None], seed: int) -> Path:
    """Writes a repository's files with `write(folder)` and lays them out as huggingface_hub does:
    blobs/<sha256>, snapshots/<commit>/<file> -> relative symlink to the blob, refs/main = commit."""
    from huggingface_hub.file_download import repo_folder_name

    from trainables.hub import hub_cache, parse

    kind, repo = parse(name)
    root = hub_cache(data_dir) / repo_folder_name(repo_id=repo, repo_type=kind)
    shutil.rmtree(root, ignore_errors=True)
    commit = hashlib.sha1(f"{repo}@{seed}".encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        (root / "blobs").mkdir(parents=True)
        for file in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            blob = root / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
            shutil.copyfile(file, blob)
            link = snapshot / file.relative_to(tmp)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)  # last: a build that failed half-way has no ref
    return snapshot


def write_rotten_tomatoes(folder: Path, per_class: int, seed: int) -> None:
    """The real repository: train/validation/test.parquet (text, label: ClassLabel neg/pos) + README.md.
    The README declares features but no `configs`, so split names come from the file names (the weaker
    assumption: a card with `configs` maps the same files to the same splits)."""
    from datasets import ClassLabel, Dataset, Features, Value

    from trainables.lab3.text_models import generate_sentiment  # learnable sentences, labels 1 = positive

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    for i, (split, n) in enumerate((("train", 20), ("validation", 5), ("test", 5))):
        rows = generate_sentiment(n * per_class, seed=seed * 10 + i, noise=0.0)
        Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    (folder / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: text\n    dtype: string\n  - name: label\n    dtype:\n"
        "      class_label:\n        names:\n          '0': neg\n          '1': pos\n---\n# rotten_tomatoes (fixture)\n")


def write_distilbert(folder: Path, seed: int) -> None:
    """config.json + model.safetensors (DistilBertForMaskedLM, as the real checkpoint) + vocab.txt,
    tokenizer.json and the real two-key tokenizer_config.json (the class comes from config.json)."""
    import torch
    from transformers import DistilBertConfig, DistilBertForMaskedLM, DistilBertTokenizer

    from trainables.lab3.text_models import vocabulary

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,'!?-\"")
    words = [w for w in vocabulary() if not w.startswith("[")]  # the review generator's words, whole
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(chars + words)) + [f"##{c}" for c in chars]
    tokenizer = DistilBertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=512, pad_token_id=0, architectures=["DistilBertForMaskedLM"])
    DistilBertForMaskedLM(config).save_pretrained(folder)


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes (byte-level BPE's base alphabet)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


def write_clip(folder: Path, patch: int, seed: int) -> None:
    """A CLIPModel (224-pixel ViT with `patch`-pixel patches, 2-layer towers 32 wide) + CLIP's BPE
    tokenizer (vocab.json, merges.txt, tokenizer.json) over prompt words and CIFAR class names, and the
    image processor config. As in the real config, text eos_token_id = 2 (legacy: pool at the largest
    id, which is <|endoftext|>)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    base = _byte_chars()
    vocab, merges = base + [c + "</w>" for c in base], []
    words = "a an the of photo blurry black and white low high contrast bad good small big picture".split()
    # prompt words first: their merges rank first, so "photo" stays one token (as in CLIP's vocabulary)
    for word in dict.fromkeys(words + [w for n in CIFAR10_NAMES + CIFAR100_NAMES for w in n.split("_")]):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right until the word is one token
            merge, parts = f"{parts[0]} {parts[1]}", [parts[0] + parts[1]] + parts[2:]
            if merge not in merges:
                merges.append(merge)
                vocab.append(parts[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(dict.fromkeys(vocab))}
    (folder / "vocab.json").write_text(json.dumps(ids))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(vocab=ids, merges=[tuple(m.split()) for m in merges], model_max_length=77).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    torch.manual_seed(seed)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config={**tower, "vocab_size": len(ids), "max_position_embeddings": 77,
                                     "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2},
                        vision_config={**tower, "image_size": 224, "patch_size": patch}, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)


# ---------------------------------------------------------------- all of it
def build(data_dir: Path, *, images_per_class: int = 4, seed: int = 0, only: set[str] | None = None) -> dict[str, Path]:
    """Writes every asset in `only` (default: all of ASSETS) under data_dir; returns where each went
    (a torchvision root folder or a Hub snapshot folder). Rewrites what is there."""
    unknown = set(only or ()) - set(ASSETS)
    if unknown:
        raise ValueError(f"unknown fixture(s) {sorted(unknown)} (known: {', '.join(ASSETS)})")
    data_dir, n = Path(data_dir), images_per_class
    writers: dict[str, Callable[[], Path]] = {
        "mnist": lambda: write_mnist(data_dir, n, seed),
        "cifar10": lambda: write_cifar10(data_dir, n, seed + 1),
        "cifar100": lambda: write_cifar100(data_dir, n, seed + 2),
        "svhn": lambda: write_svhn(data_dir, n, seed + 3),
        ROTTEN: lambda: publish(data_dir, ROTTEN, lambda f: write_rotten_tomatoes(f, n, seed), seed),
        DISTILBERT: lambda: publish(data_dir, DISTILBERT, lambda f: write_distilbert(f, seed), seed),
        CLIP_B16: lambda: publish(data_dir, CLIP_B16, lambda f: write_clip(f, 16, seed), seed),
        CLIP_B32: lambda: publish(data_dir, CLIP_B32, lambda f: write_clip(f, 32, seed), seed),
    }
    return {name: writers[name]() for name in ASSETS if only is None or name in only}


# ---------------------------------------------------------------- the md5 bypass (see the docstring)
MD5_CHECKERS = ("torchvision.datasets.utils", "torchvision.datasets.cifar", "torchvision.datasets.svhn")


def _file_exists(fpath: str | os.PathLike, md5: str | None = None) -> bool:
    return os.path.isfile(fpath)


def install_md5_bypass() -> None:
    """For the life of the process (a Ray `worker_process_setup_hook`): check_integrity ignores md5."""
    for module in MD5_CHECKERS:
        importlib.import_module(module).check_integrity = _file_exists


@contextlib.contextmanager
def skip_md5() -> Iterator[None]:
    """Within the block, torchvision checks that its files exist but not their md5."""
    modules = [importlib.import_module(m) for m in MD5_CHECKERS]
    saved = [m.check_integrity for m in modules]
    install_md5_bypass()
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.check_integrity = original


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fixture_data", description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--images-per-class", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=ASSETS)
    a = p.parse_args(argv)
    written = build(a.data_dir, images_per_class=a.images_per_class, seed=a.seed, only=set(a.only or ASSETS))
    print("\n".join(f"{name:<55} {path}" for name, path in written.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
