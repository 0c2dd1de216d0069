"""tests/fixture_data.py writes what the real loaders read: every format goes through the project's own
loading code (trainables.data, the OOD sets, the text and CLIP loaders, the hub helpers), offline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests import fixture_data as fx
from trainables.context import LocalContext
from trainables.data import has_dataset, load_image_data

CPU = torch.device("cpu")
PER_CLASS = 4
CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "svhn": (3, 32, 32)}
SEEDS = {"mnist": 0, "cifar10": 1, "cifar100": 2, "svhn": 3}  # build(seed=0)'s seed per dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fixtures")
    fx.build(d, images_per_class=PER_CLASS)
    return d


@pytest.mark.parametrize("name", list(CLASSES))
def test_torchvision_layouts_load_through_load_image_data(data_dir, name):
    k = CLASSES[name]
    with fx.skip_md5():
        data = load_image_data(name, data_dir, CPU, val_fraction=0.1)
    assert data.shape == SHAPES[name] and data.num_classes == k and data.train.x.dtype == torch.uint8
    assert len(data.train) + len(data.val) == k * PER_CLASS and len(data.test) == k * PER_CLASS
    # the official test split comes back exactly as written, pixels and labels (SVHN's 10 -> 0 included)
    _, (x_test, y_test) = fx.splits(k, PER_CLASS, SHAPES[name], SEEDS[name])
    assert torch.equal(data.test.x, torch.from_numpy(x_test)) and torch.equal(data.test.y, torch.from_numpy(y_test))
    train_labels = torch.cat([data.train.y, data.val.y])
    assert torch.equal(torch.bincount(train_labels, minlength=k), torch.full((k,), PER_CLASS))


def test_only_the_md5_check_is_bypassed(data_dir, tmp_path):
    import torchvision.datasets.cifar as cifar

    original = cifar.check_integrity
    assert has_dataset("mnist", data_dir)  # MNIST checks no md5: no bypass needed
    assert not any(has_dataset(n, data_dir) for n in ("cifar10", "cifar100", "svhn"))  # the md5 differs
    with fx.skip_md5():
        assert all(has_dataset(n, data_dir) for n in ("cifar10", "cifar100", "svhn"))
        assert not any(has_dataset(n, tmp_path) for n in ("cifar10", "cifar100", "svhn"))  # files still needed
    assert cifar.check_integrity is original and not has_dataset("cifar10", data_dir)


def test_svhn_is_there_only_with_both_of_its_files(data_dir, tmp_path):
    """The loader reads train_32x32.mat too (raw_splits, Lab 4's OOD set): the test file alone is not SVHN."""
    import shutil

    shutil.copy(data_dir / "test_32x32.mat", tmp_path)
    with fx.skip_md5():
        assert not has_dataset("svhn", tmp_path)
        shutil.copy(data_dir / "train_32x32.mat", tmp_path)
        assert has_dataset("svhn", tmp_path)
        (tmp_path / "test_32x32.mat").unlink()
        assert not has_dataset("svhn", tmp_path)


def test_images_are_learnable_from_a_few_per_class(data_dir):
    """Nearest class mean on raw pixels: the class templates carry the label (chance is 10%)."""
    with fx.skip_md5():
        data = load_image_data("cifar10", data_dir, CPU, val_fraction=0.1)
    x, y = data.train.x.flatten(1).float(), data.train.y
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    pred = torch.cdist(data.test.x.flatten(1).float(), means).argmin(1)
    assert (pred == data.test.y).float().mean() >= 0.9


@pytest.mark.parametrize("ood_set", ["cifar100", "svhn"])
def test_ood_sets_of_the_full_profile(data_dir, ood_set):
    from trainables.lab4.evaluation import load_ood
    from trainables.lab4.ood import CIFAR100_OVERLAP
    from trainables.lab4.robustness import Lab4Config

    cfg = Lab4Config(dataset="cifar10", ood_set=ood_set, model="cnn")
    with fx.skip_md5():
        data = load_image_data("cifar10", data_dir, CPU, val_fraction=0.1)
        ood = load_ood(cfg, LocalContext(data_dir=data_dir), data)
    assert ood.val.shape == (len(data.val), 3, 32, 32) and len(ood.test) > 0 and ood.test.dtype == torch.uint8
    if ood_set == "cifar100":  # no image of the four classes that CIFAR-10 also has
        _, (x, y) = fx.splits(100, PER_CLASS, (3, 32, 32), SEEDS["cifar100"])
        overlap = {fx.CIFAR100_NAMES.index(n) for n in CIFAR100_OVERLAP}
        banned = {bytes(img) for img, label in zip(x.reshape(len(y), -1), y) if label in overlap}
        drawn = {bytes(img) for img in torch.cat([ood.val, ood.test]).flatten(1).numpy()}
        assert len(drawn) == len(ood.val) + len(ood.test) and not drawn & banned


def test_the_hub_cache_is_one_huggingface_hub_itself_reads(data_dir):
    from huggingface_hub import scan_cache_dir

    from trainables.hub import has_asset, hub_cache

    info = scan_cache_dir(hub_cache(data_dir))
    assert not info.warnings and {r.repo_id for r in info.repos} == {n.partition(":")[2] for n in fx.ASSETS[4:]}
    assert all(set(r.refs) == {"main"} and len(r.revisions) == 1 for r in info.repos)
    assert all(has_asset(n, data_dir) for n in fx.ASSETS[4:])


def test_rotten_tomatoes_loads_as_the_full_profile_asks(data_dir):
    from datasets import ClassLabel

    from trainables.lab3.text_models import load_sentiment

    ds = load_sentiment(fx.ROTTEN, data_dir)
    assert {k: len(v) for k, v in ds.items()} == {"train": 20 * PER_CLASS, "validation": 5 * PER_CLASS,
                                                  "test": 5 * PER_CLASS}
    assert ds["train"].column_names == ["text", "label"] and isinstance(ds["train"].features["label"], ClassLabel)
    assert ds["train"].features["label"].names == ["neg", "pos"] and set(ds["test"]["label"]) == {0, 1}
    assert len(load_sentiment(fx.ROTTEN, data_dir, max_train=7)["train"]) == 7


def test_distilbert_tokenizer_and_pretrained_weights_load(data_dir):
    from safetensors.torch import load_file

    from trainables.hub import local_snapshot
    from trainables.lab3.text_models import load_text_model, load_tokenizer

    repo = fx.DISTILBERT.partition(":")[2]
    tok = load_tokenizer(repo, data_dir, max_length=128)
    enc = tok(["The plot is NOT funny, but charming!", "zyx"])
    assert tok.convert_ids_to_tokens(enc["input_ids"][0]) == ["[CLS]", "the", "plot", "is", "not", "funny", ",",
                                                              "but", "charming", "!", "[SEP]"]
    assert tok.convert_ids_to_tokens(enc["input_ids"][1]) == ["[CLS]", "z", "##y", "##x", "[SEP]"]  # WordPiece
    net = load_text_model(repo, data_dir, tok, num_labels=2)
    assert type(net).__name__ == "DistilBertForSequenceClassification"
    saved = load_file(local_snapshot(fx.DISTILBERT, data_dir) / "model.safetensors")
    assert torch.equal(net.distilbert.embeddings.word_embeddings.weight,
                       saved["distilbert.embeddings.word_embeddings.weight"])  # the encoder is the checkpoint's
    batch = tok(["a good film .", "a dull plot ."], padding=True, return_tensors="pt")
    assert net(**batch).logits.shape == (2, 2)
    assert type(load_text_model(repo, data_dir, tok, classifier=False)).__name__ == "DistilBertModel"


def test_sentiment_trainable_runs_on_the_full_profile_names(data_dir):
    from trainables.lab3.sentiment import SentimentConfig, train

    cfg = SentimentConfig(method="frozen", model=fx.DISTILBERT.partition(":")[2], dataset=fx.ROTTEN, max_length=32)
    m = train(cfg, LocalContext(data_dir=data_dir))
    assert m["train_size"] == 20 * PER_CLASS and 0 <= m["test_acc"] <= 1


@pytest.mark.parametrize("name,patch", [(fx.CLIP_B16, 16), (fx.CLIP_B32, 32)])
def test_clip_checkpoints_tokenizer_and_zero_shot_on_cifar10(data_dir, name, patch):
    from transformers import AutoImageProcessor

    from trainables.hub import local_snapshot
    from trainables.lab3.clip import ClipConfig, train
    from trainables.lab3.clip_models import load_clip

    repo = name.partition(":")[2]
    clip, tok = load_clip(repo, data_dir)
    assert type(clip).__name__ == "CLIPModel" and clip.config.vision_config.image_size == 224
    assert clip.config.vision_config.patch_size == patch
    ids = tok(["a photo of a aquarium fish."])["input_ids"][0]
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>",
                                              "aquarium</w>", "fish</w>", ".</w>", "<|endoftext|>"]
    assert max(ids) == ids[-1] == tok.eos_token_id  # legacy eos_token_id=2: CLIP pools at the largest id
    processor = AutoImageProcessor.from_pretrained(local_snapshot(name, data_dir))
    image = np.zeros((32, 32, 3), np.uint8)
    assert processor(images=image, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)
    with fx.skip_md5():
        m = train(ClipConfig(method="zeroshot", model=repo, dataset="cifar10", max_eval=8, eval_batch=8),
                  LocalContext(data_dir=data_dir))
    assert m["num_classes"] == 10 and 0 <= m["test_acc"] <= 1


def test_build_only_some_and_the_command_line(tmp_path, capsys):
    assert fx.main([str(tmp_path), "--only", "mnist", "svhn", "--images-per-class", "2"]) == 0
    assert "mnist" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST", "test_32x32.mat", "train_32x32.mat"]
    with fx.skip_md5():
        assert len(load_image_data("svhn", tmp_path, CPU).test) == 20
    with pytest.raises(ValueError, match="unknown fixture"):
        fx.build(tmp_path, only={"imagenet"})
