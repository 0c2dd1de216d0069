"""Hugging Face assets in the data folder: names, the cache layout, atomic downloads, offline loading of
the full-profile code paths from a locally built cache (no network)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainables import hub
from trainables.context import LocalContext
from trainables.data import DataMissing, download_dataset, has_dataset

COMMIT = "0123456789abcdef0123456789abcdef01234567"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_snapshot(data_dir: Path, kind: str, repo: str) -> Path:
    """A snapshot laid out as huggingface_hub does: <kind>s--ORG--NAME/{refs/main, snapshots/<commit>/}."""
    root = hub.hub_cache(data_dir) / hub.repo_folder(kind, repo)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def test_names_are_parsed_or_rejected():
    assert hub.parse("hf-model:distilbert/distilbert-base-uncased") == ("model", "distilbert/distilbert-base-uncased")
    assert hub.parse("hf-dataset:cornell-movie-review-data/rotten_tomatoes")[0] == "dataset"
    for bad in ("hf-model:noslash", "hf-thing:a/b", "hf-model:a/b/c", "hf-model:/b"):
        with pytest.raises(ValueError):
            hub.parse(bad)


def test_has_asset_reads_the_hub_cache_layout(tmp_path):
    name = "hf-model:org/tiny"
    assert not hub.has_asset(name, tmp_path) and not has_dataset(name, tmp_path) and not hub.has_asset(name, None)
    assert not any(tmp_path.rglob("*org--tiny*"))  # asking leaves no trace
    snap = fake_snapshot(tmp_path, "model", "org/tiny")
    (snap / "config.json").write_text("{}")
    assert not hub.has_asset(name, tmp_path)  # a model snapshot without weights is not there yet
    (snap / "model.safetensors").write_bytes(b"")
    assert hub.has_asset(name, tmp_path) and has_dataset(name, tmp_path)  # data.py dispatches ":" names here
    assert hub.local_snapshot(name, tmp_path).name == COMMIT
    with pytest.raises(DataMissing, match="prefetch"):
        hub.local_snapshot("hf-model:org/other", tmp_path)


def test_failed_download_raises_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def half_then_fail(repo, repo_type, cache_dir, local_files_only=False, **kw):
        if local_files_only:  # the "is it there already?" check
            raise FileNotFoundError(repo)
        (Path(cache_dir) / hub.repo_folder(repo_type, repo) / "blobs").mkdir(parents=True)
        (Path(cache_dir) / hub.repo_folder(repo_type, repo) / "blobs" / "x.incomplete").write_text("half")
        raise ConnectionError("no route to host\nsecond line")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", half_then_fail)
    with pytest.raises(DataMissing) as err:
        download_dataset("hf-model:org/tiny", tmp_path)
    assert "\n" not in str(err.value) and "org/tiny" in str(err.value)
    # no partial repository, no temp folder, not even the cache folders the download created
    assert tmp_path.is_dir() and not hub.hub_cache(tmp_path).exists()


def test_download_moves_a_complete_snapshot_into_place(tmp_path, monkeypatch):
    real = __import__("huggingface_hub").snapshot_download

    def fake_download(repo, repo_type, cache_dir, local_files_only=False, **kw):
        if local_files_only:
            return real(repo, repo_type=repo_type, cache_dir=cache_dir, local_files_only=True, **kw)
        root = Path(cache_dir) / hub.repo_folder(repo_type, repo)
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(COMMIT)
        (root / "snapshots" / COMMIT).mkdir(parents=True)
        (root / "snapshots" / COMMIT / "config.json").write_text("{}")
        (root / "snapshots" / COMMIT / "train.parquet").write_bytes(b"")  # a dataset needs a data file
        return str(root / "snapshots" / COMMIT)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    hub.download_asset("hf-dataset:org/set", tmp_path)
    assert hub.has_asset("hf-dataset:org/set", tmp_path)
    assert [p.name for p in hub.hub_cache(tmp_path).iterdir()] == ["datasets--org--set"]


@pytest.fixture(scope="module")
def offline_cache(tmp_path_factory) -> Path:
    """A data folder holding a (tiny) model and a Rotten-Tomatoes-shaped dataset in the Hub's layout,
    so that the full profile's loading code runs here without network."""
    from transformers import AutoModelForSequenceClassification

    from trainables.lab3.text_models import generate_sentiment, tiny_distilbert_config, tiny_tokenizer

    data_dir = tmp_path_factory.mktemp("hfdata")
    tok = tiny_tokenizer()
    model_dir = fake_snapshot(data_dir, "model", "org/tiny-distilbert")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(tiny_distilbert_config(len(tok))).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    set_dir = fake_snapshot(data_dir, "dataset", "org/reviews")
    from datasets import Dataset

    for i, (split, n) in enumerate((("train", 300), ("validation", 100), ("test", 100))):
        Dataset.from_dict(generate_sentiment(n, seed=50 + i)).to_parquet(str(set_dir / f"{split}.parquet"))
    return data_dir


def test_full_profile_code_path_loads_model_and_dataset_from_the_cache(offline_cache):
    from trainables.lab3.sentiment import SentimentConfig, train

    ctx = LocalContext(data_dir=offline_cache)
    cfg = SentimentConfig(method="lora", model="org/tiny-distilbert", dataset="hf-dataset:org/reviews", epochs=1)
    m = train(cfg, ctx)
    assert m["epoch"] == 1 and 0 <= m["test_acc"] <= 1 and m["encoder_changed"] == 0.0
    frozen = train(SentimentConfig(method="frozen", model="org/tiny-distilbert", dataset="hf-dataset:org/reviews"), ctx)
    assert frozen["train_size"] == 300
