"""Hugging Face models and datasets in the data folder, in the Hub's own cache layout.

Names: "hf-model:ORG/NAME" and "hf-dataset:ORG/NAME" (what a Study lists in `datasets`). They live
under `<data_dir>/huggingface/hub/{models,datasets}--ORG--NAME/` exactly as `huggingface_hub` lays
them out, so `HF_HOME=<data_dir>/huggingface HF_HUB_OFFLINE=1` also makes plain
`from_pretrained("ORG/NAME")` work there. Trainables never touch the network: they ask for the local
snapshot folder (`local_snapshot`) and load from that path. Downloads happen only in the prefetch
step (`download_asset`), into a temporary folder that is moved into place when complete.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .data import DataMissing

KINDS = {"hf-model": "model", "hf-dataset": "dataset"}
# Only what PyTorch loading needs: no TF/Flax/ONNX weights, no pickled .bin when safetensors exist.
PATTERNS = {"model": ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*"],
            "dataset": ["*.json", "*.md", "*.parquet", "*.arrow", "*.csv", "*.txt"]}


def parse(name: str) -> tuple[str, str]:
    """'hf-model:ORG/NAME' -> ('model', 'ORG/NAME'); ValueError for anything else."""
    prefix, sep, repo = name.partition(":")
    if not sep or prefix not in KINDS or repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"not a Hugging Face asset name: {name!r} (expected hf-model:ORG/NAME or hf-dataset:ORG/NAME)")
    return KINDS[prefix], repo


def hub_cache(data_dir: Path) -> Path:
    return Path(data_dir) / "huggingface" / "hub"


def repo_folder(kind: str, repo: str) -> str:
    """The Hub cache's folder name for a repository: models--ORG--NAME."""
    return f"{kind}s--{repo.replace('/', '--')}"


def local_snapshot(name: str, data_dir: Path | None) -> Path:
    """The complete local snapshot folder of `name`; DataMissing (one line) when it is not there."""
    from huggingface_hub import snapshot_download

    kind, repo = parse(name)
    if data_dir is None:
        raise DataMissing(f"{name} needs a data folder (--data-dir)")
    try:
        return Path(snapshot_download(repo, repo_type=kind, cache_dir=hub_cache(data_dir), local_files_only=True,
                                      allow_patterns=PATTERNS[kind]))
    except Exception:
        raise DataMissing(f"{name} not found in {hub_cache(data_dir)}; run `run.py prefetch lab3 --data-dir "
                          f"{data_dir}` where there is network") from None


def has_asset(name: str, data_dir: Path | None) -> bool:
    try:
        local_snapshot(name, data_dir)
        return True
    except DataMissing:
        return False


def download_asset(name: str, data_dir: Path) -> None:
    """Downloads `name` into a temporary cache beside the real one and moves its repository folder into
    place only when the whole snapshot arrived: an interrupted download leaves nothing behind."""
    from huggingface_hub import snapshot_download

    kind, repo = parse(name)
    if has_asset(name, data_dir):
        return
    cache = hub_cache(data_dir)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        try:
            snapshot_download(repo, repo_type=kind, cache_dir=tmp, allow_patterns=PATTERNS[kind])
        except Exception as e:  # no network, unknown repo, gated repo, disk full ...
            message = " ".join(str(e).split())[:200]
            raise DataMissing(f"could not download {name} into {cache}: {type(e).__name__}: {message}") from None
        folder = repo_folder(kind, repo)
        target = cache / folder
        if target.exists():  # an older or incomplete copy: replaced whole
            shutil.rmtree(target)
        # Snapshots link to ../../blobs relatively, so the repository folder moves as one piece.
        shutil.move(str(Path(tmp) / folder), target)


def load_hf_dataset(name: str, data_dir: Path | None):
    """A DatasetDict from the local snapshot of an 'hf-dataset:ORG/NAME' (parquet/arrow/csv files; the
    split names come from the file names, as on the Hub). Arrow caches go under the data folder."""
    from datasets import load_dataset

    snapshot = local_snapshot(name, data_dir)
    return load_dataset(str(snapshot), cache_dir=str(Path(data_dir) / "huggingface" / "datasets"))
