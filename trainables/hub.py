"""Hugging Face models and datasets in the data folder, in the Hub's own cache layout.

Names: "hf-model:ORG/NAME" and "hf-dataset:ORG/NAME" (what a Study lists in `datasets`). They live
under `<data_dir>/huggingface/hub/{models,datasets}--ORG--NAME/` exactly as `huggingface_hub` lays
them out, so `HF_HOME=<data_dir>/huggingface HF_HUB_OFFLINE=1` also makes plain
`from_pretrained("ORG/NAME")` work there. Trainables never touch the network: they ask for the local
snapshot folder (`local_snapshot`) and load from that path. Downloads happen only in the prefetch
step (`download_asset`), into a temporary folder that is moved into place when complete.
"""
from __future__ import annotations

import contextlib
import fnmatch
import shutil
import tempfile
from pathlib import Path

from .data import DataMissing

KINDS = {"hf-model": "model", "hf-dataset": "dataset"}
# Only what PyTorch loading needs: no TF/Flax/ONNX weights, no pickled .bin when safetensors exist.
PATTERNS = {"model": ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*"],
            "dataset": ["*.json", "*.md", "*.parquet", "*.arrow", "*.csv", "*.txt"]}
# A repository with no safetensors holds PyTorch's pickled weights (sharded or not; the index is a
# .json): the openai/clip-vit-* repositories on main, for one. These are fetched instead.
PYTORCH_BIN = ["pytorch_model*.bin"]
# What a complete snapshot must hold besides its configs: the weights, or the data files.
CONTENT = {"model": ["*.safetensors", *PYTORCH_BIN], "dataset": ["*.parquet", "*.arrow", "*.csv", "*.txt"]}


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
        snapshot = Path(snapshot_download(repo, repo_type=kind, cache_dir=hub_cache(data_dir), local_files_only=True,
                                          allow_patterns=PATTERNS[kind]))
    except Exception:
        raise DataMissing(f"{name} not found in {hub_cache(data_dir)}; run `run.py prefetch lab3 --data-dir "
                          f"{data_dir}` where there is network") from None
    if not _matching(snapshot, CONTENT[kind]):  # configs and a tokenizer, but no weights (or no data)
        raise DataMissing(f"{name} in {hub_cache(data_dir)} has no {'weights' if kind == 'model' else 'data'} file "
                          f"({', '.join(CONTENT[kind])}); run `run.py prefetch lab3 --data-dir {data_dir}` again "
                          f"where there is network")
    return snapshot


def _matching(folder: Path, patterns: list[str]) -> list[str]:
    """Names of the files under `folder` (a snapshot, or a repository folder) matching a pattern."""
    return [p.name for p in folder.rglob("*") if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]


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
    created = [d for d in (cache, cache.parent, Path(data_dir)) if not d.exists()]  # deepest first
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            try:
                snapshot_download(repo, repo_type=kind, cache_dir=tmp, allow_patterns=_patterns(kind, repo))
            except Exception as e:  # no network, unknown repo, gated repo, disk full ...
                message = " ".join(str(e).split())[:200]
                raise DataMissing(f"could not download {name} into {cache}: {type(e).__name__}: {message}") from None
            folder = repo_folder(kind, repo)
            if not _matching(Path(tmp) / folder, CONTENT[kind]):
                raise DataMissing(f"could not download {name} into {cache}: the repository has no "
                                  f"{'PyTorch weights' if kind == 'model' else 'data files'} ({', '.join(CONTENT[kind])})")
            target = cache / folder
            if target.exists():  # an older or incomplete copy: replaced whole
                shutil.rmtree(target)
            # Snapshots link to ../../blobs relatively, so the repository folder moves as one piece.
            shutil.move(str(Path(tmp) / folder), target)
    except BaseException:  # the folders this download created go with it (a later has_asset sees nothing)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: never anything that was there
        raise


def _patterns(kind: str, repo: str) -> list[str]:
    """PATTERNS, plus the pickled PyTorch weights of a model repository that has no safetensors."""
    if kind != "model":
        return PATTERNS[kind]
    from huggingface_hub import HfApi

    files = [s.rfilename for s in HfApi().repo_info(repo, repo_type=kind, revision="main").siblings or ()]
    has_safetensors = any(fnmatch.fnmatch(f, "*.safetensors") for f in files)
    return PATTERNS[kind] if has_safetensors else PATTERNS[kind] + PYTORCH_BIN


def load_hf_dataset(name: str, data_dir: Path | None):
    """A DatasetDict from the local snapshot of an 'hf-dataset:ORG/NAME' (parquet/arrow/csv files; the
    split names come from the file names, as on the Hub). Arrow caches go under the data folder."""
    from datasets import load_dataset

    snapshot = local_snapshot(name, data_dir)
    return load_dataset(str(snapshot), cache_dir=str(Path(data_dir) / "huggingface" / "datasets"))
