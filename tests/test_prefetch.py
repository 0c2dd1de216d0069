"""`run.py prefetch LAB --data-dir DIR` end to end, with only the network replaced where it returns bytes:

- torchvision downloads through `urllib.request.urlopen`: a urllib handler, installed as the global
  opener, answers the real URLs (torchvision's own class attributes) with archives built from
  tests/fixture_data in the real formats (cifar-10-python.tar.gz holding cifar-10-batches-py/, MNIST's
  .gz files, SVHN's .mat files); the md5 of the real archives is bypassed with fixture_data.skip_md5;
- huggingface_hub talks HTTP through its httpx2 client: a MockTransport answers as the Hub does (repo
  info, tree listing, HEAD and GET of resolve/) with the files of the fixture snapshots, plus the
  non-PyTorch files the real repositories also hold.
The files must land where the full profile looks (has_dataset), load through the project's loaders,
and a download that breaks half-way must leave nothing half-written in --data-dir.
"""
from __future__ import annotations

import email.message
import gzip
import hashlib
import io
import json
import re
import tarfile
import urllib.error
import urllib.request
import urllib.response
from pathlib import Path

import pytest
import torch

from tests import fixture_data as fx
from trainables.data import has_dataset, load_image_data
from trainables.hub import hub_cache, local_snapshot

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """What the servers serve: the fixture files, written once."""
    d = tmp_path_factory.mktemp("served")
    fx.build(d, images_per_class=2)
    return d


# ---------------------------------------------------------------- torchvision: urllib
class _CutConnection(io.BytesIO):
    """Yields its bytes, then the connection resets instead of ending."""

    def read(self, n: int = -1) -> bytes:
        chunk = super().read(n)
        if not chunk:
            raise ConnectionResetError(104, "Connection reset by peer")
        return chunk


class Web(urllib.request.BaseHandler):
    """http(s)_open for every urlopen in the process: serves `files` by URL; `fail` sends half of its
    bytes and resets; anything else is unreachable (the test never touches the real network)."""

    handler_order = 100  # asked before urllib's real HTTP(S) handlers (500)

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.fail, self.asked = {_https(u): b for u, b in files.items()}, None, []

    def https_open(self, req: urllib.request.Request) -> urllib.response.addinfourl:
        url = _https(req.full_url)  # torchvision retries a failed https:// download as http://
        self.asked.append(url)
        if url not in self.files:
            raise urllib.error.URLError(f"unreachable in this test: {url}")
        data = self.files[url]
        cut = self.fail is not None and url == _https(self.fail)
        body = _CutConnection(data[: len(data) // 2]) if cut else io.BytesIO(data)
        response = urllib.response.addinfourl(body, email.message.Message(), req.full_url, 200)
        response.length, response.msg = len(data), "OK"  # what http.client's response has
        return response

    http_open = https_open


def _https(url: str) -> str:
    return url.replace("http://", "https://", 1)


def torchvision_files(src: Path) -> dict[str, bytes]:
    """The real download URLs -> the bytes of the real archive formats, built from the fixtures."""
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST, SVHN

    def tgz(folder: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(src / folder, arcname=folder)
        return buf.getvalue()

    files = {CIFAR10.url: tgz(CIFAR10.base_folder), CIFAR100.url: tgz(CIFAR100.base_folder)}
    for filename, _ in MNIST.resources:  # every mirror serves them; torchvision tries the first
        raw = (src / "MNIST" / "raw" / filename.removesuffix(".gz")).read_bytes()
        files.update({mirror + filename: gzip.compress(raw) for mirror in MNIST.mirrors})
    for split in ("train", "test"):  # not "extra": the project never asks for it
        url, filename, _ = SVHN.split_list[split]
        files[url] = (src / filename).read_bytes()
    return files


@pytest.fixture
def web(source):
    handler = Web(torchvision_files(source))
    urllib.request.install_opener(urllib.request.build_opener(handler))
    yield handler
    urllib.request.install_opener(None)


def prefetch(lab: str, data_dir: Path) -> int:
    from orchestrator.cli import main

    with fx.skip_md5():
        return main(["prefetch", lab, "--data-dir", str(data_dir)])


def full_datasets(lab: str) -> list[str]:
    from orchestrator import studies

    return sorted({d for s in studies.studies_of(lab) for d in s.profiles["full"].datasets})


def error_line(capsys) -> str:
    """run.py's error: exactly one line (stderr also holds torchvision's download progress bars)."""
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("run.py:")]
    return line


def leftovers(data_dir: Path) -> list[str]:
    return [str(p.relative_to(data_dir)) for p in data_dir.rglob(".download-*")]


@pytest.mark.parametrize("lab", ["lab1", "lab4"])
def test_prefetch_lands_the_torchvision_sets_where_the_full_profile_looks(lab, source, web, tmp_path):
    dst = tmp_path / "data"
    assert prefetch(lab, dst) == 0
    names = full_datasets(lab)
    assert set(names) == ({"mnist", "cifar10", "cifar100"} if lab == "lab1" else {"cifar10", "cifar100", "svhn"})
    with fx.skip_md5():
        for name in names:
            assert has_dataset(name, dst)
            got, want = load_image_data(name, dst, CPU), load_image_data(name, source, CPU)
            assert torch.equal(got.test.x, want.test.x) and torch.equal(got.train.y, want.train.y)
    assert leftovers(dst) == []


def test_an_md5_mismatch_is_one_line_and_leaves_no_data_folder(web, tmp_path, capsys):
    from orchestrator.cli import main

    dst = tmp_path / "data"
    assert main(["prefetch", "lab1", "--data-dir", str(dst)]) == 2  # no bypass: the fixtures are not CIFAR-10
    err = error_line(capsys)
    assert "could not download cifar10" in err and "corrupted" in err
    assert not dst.exists()  # prefetch created it, and removed it again


@pytest.mark.parametrize("broken", ["cifar100", "mnist"])
def test_a_download_broken_half_way_leaves_nothing_half_written(broken, web, tmp_path, capsys):
    from torchvision.datasets import CIFAR100, MNIST

    web.fail = CIFAR100.url if broken == "cifar100" else MNIST.mirrors[0] + MNIST.resources[0][0]
    dst = tmp_path / "data"
    dst.mkdir()
    assert prefetch("lab1", dst) == 2  # order: cifar10, cifar100, mnist
    err = error_line(capsys)
    assert f"could not download {broken}" in err
    assert web.fail in web.asked
    done = {"cifar10"} if broken == "cifar100" else {"cifar10", "cifar100"}
    with fx.skip_md5():
        assert {n for n in ("cifar10", "cifar100", "mnist") if has_dataset(n, dst)} == done
    assert leftovers(dst) == []
    cifar10 = ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # torchvision keeps the archive beside the folder
    cifar100 = ["cifar-100-python", "cifar-100-python.tar.gz"]
    assert sorted(p.name for p in dst.iterdir()) == cifar10 + (cifar100 if broken == "mnist" else [])


# ---------------------------------------------------------------- Hugging Face: httpx2
# Files the real repositories hold besides what PyTorch loading needs: prefetch must not fetch them.
EXTRA = {"model": {".gitattributes": b"*.bin filter=lfs\n", "tf_model.h5": b"HDF", "flax_model.msgpack": b"\x80",
                   "pytorch_model.bin": b"PK"},
         "dataset": {".gitattributes": b"*.parquet filter=lfs\n"}}


class Hub:
    """Answers huggingface_hub's requests as the Hub does, for repos {(kind, repo): (commit, {path: bytes})}:
    GET /api/{kind}s/REPO/revision/REV, GET /api/{kind}s/REPO/tree/REV, HEAD/GET [datasets/]REPO/resolve/REV/PATH.
    `fail` = (repo, path): that file's GET sends half of its bytes, then the connection breaks."""

    def __init__(self, repos: dict[tuple[str, str], tuple[str, dict[str, bytes]]]) -> None:
        self.repos, self.fail, self.asked = repos, None, []

    def __call__(self, request):
        import httpx2

        path = request.url.path
        self.asked.append(f"{request.method} {path}")
        api = re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        resolve = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if api:
            kind, repo, what = api.group(1), api.group(2), api.group(3)
        elif resolve:
            kind, repo, what = "dataset" if resolve.group(1) else "model", resolve.group(2), "resolve"
        else:
            return httpx2.Response(404, json={"error": f"unexpected request {path}"})
        if (kind, repo) not in self.repos:
            return httpx2.Response(404, headers={"x-error-code": "RepoNotFound"}, json={"error": "not found"})
        commit, files = self.repos[kind, repo]
        if what == "revision":
            return httpx2.Response(200, json={"id": repo, "sha": commit, "private": False,
                                              "siblings": [{"rfilename": p} for p in files]})
        if what == "tree":
            return httpx2.Response(200, json=[{"type": "file", "path": p, "size": len(b),
                                               "oid": hashlib.sha1(b).hexdigest()} for p, b in files.items()])
        name = resolve.group(4)
        if name not in files:
            return httpx2.Response(404, headers={"x-error-code": "EntryNotFound", "x-repo-commit": commit})
        data = files[name]
        headers = {"x-repo-commit": commit, "etag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "content-length": str(len(data))}
        if request.method == "HEAD":
            return httpx2.Response(200, headers=headers)
        if self.fail == (repo, name):
            return httpx2.Response(200, headers=headers, stream=_BrokenStream(data[: len(data) // 2]))
        return httpx2.Response(200, headers=headers, content=data)


class _BrokenStream:
    """An httpx2 response body that stops half-way with a read error, as a reset connection does."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    def __iter__(self):
        import httpx2

        yield self.head
        raise httpx2.ReadError("Connection reset by peer")

    def close(self) -> None:
        pass


def served_repos(src: Path) -> dict[tuple[str, str], tuple[str, dict[str, bytes]]]:
    from trainables.hub import parse

    repos = {}
    for name in fx.ASSETS[4:]:
        kind, repo = parse(name)
        snapshot = local_snapshot(name, src)
        files = {str(p.relative_to(snapshot)): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
        repos[kind, repo] = (snapshot.name, {**files, **EXTRA[kind]})
    return repos


@pytest.fixture
def hub(source):
    import httpx2
    import huggingface_hub
    from huggingface_hub.utils._http import default_client_factory

    fake = Hub(served_repos(source))
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake),
                                                             follow_redirects=True))
    yield fake
    huggingface_hub.set_client_factory(default_client_factory)


def test_prefetch_lab3_lands_every_asset_in_the_hub_cache_and_it_loads(source, web, hub, tmp_path):
    from huggingface_hub import scan_cache_dir

    from trainables.lab3.clip_models import load_clip
    from trainables.lab3.text_models import load_sentiment, load_text_model, load_tokenizer

    dst = tmp_path / "data"
    assert prefetch("lab3", dst) == 0
    assert full_datasets("lab3") == ["cifar10", *sorted(fx.ASSETS[4:])]
    with fx.skip_md5():
        assert all(has_dataset(n, dst) for n in full_datasets("lab3"))
    info = scan_cache_dir(hub_cache(dst))  # huggingface_hub's own reading of the cache: no warnings
    assert not info.warnings and {r.repo_id for r in info.repos} == {n.partition(":")[2] for n in fx.ASSETS[4:]}
    for name in fx.ASSETS[4:]:
        got, want = local_snapshot(name, dst), local_snapshot(name, source)
        assert got.name == want.name  # the served commit
        assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())  # no .bin/.h5/...
        assert all(p.is_symlink() and not Path(p.readlink()).is_absolute() and p.read_bytes() == (want / p.name).read_bytes()
                   for p in got.iterdir())
    assert leftovers(dst) == []
    assert len(load_sentiment(fx.ROTTEN, dst)["train"]) == 40
    tok = load_tokenizer("distilbert/distilbert-base-uncased", dst, 128)
    assert type(load_text_model("distilbert/distilbert-base-uncased", dst, tok)).__name__.startswith("DistilBert")
    assert load_clip("openai/clip-vit-base-patch32", dst)[0].config.vision_config.patch_size == 32


def test_a_hub_download_broken_half_way_leaves_nothing_half_written(source, web, hub, tmp_path, capsys):
    hub.fail = ("distilbert/distilbert-base-uncased", "model.safetensors")
    dst = tmp_path / "data"
    assert prefetch("lab3", dst) == 2  # order: cifar10, rotten_tomatoes, distilbert (breaks), clip...
    err = error_line(capsys)
    assert "could not download hf-model:distilbert/distilbert-base-uncased" in err
    assert "GET /distilbert/distilbert-base-uncased/resolve/" + local_snapshot(fx.DISTILBERT, source).name + \
        "/model.safetensors" in hub.asked
    with fx.skip_md5():
        assert [n for n in full_datasets("lab3") if has_dataset(n, dst)] == ["cifar10", fx.ROTTEN]
    assert sorted(p.name for p in hub_cache(dst).iterdir()) == ["datasets--cornell-movie-review-data--rotten_tomatoes"]
    assert leftovers(dst) == []


def test_a_clip_repository_as_the_hub_holds_it_prefetches_loadable_weights(source, hub, tmp_path):
    """openai/clip-vit-base-patch16 and -patch32 hold pytorch_model.bin (+ TF/Flax) but no
    model.safetensors on main: prefetch fetches the .bin there (and only there), and the weights load."""
    from safetensors.torch import load_file

    from trainables.data import download_dataset
    from trainables.lab3.clip_models import load_clip

    commit, files = hub.repos["model", "openai/clip-vit-base-patch16"]
    weights = io.BytesIO()
    saved = load_file(local_snapshot(fx.CLIP_B16, source) / "model.safetensors")
    torch.save(saved, weights)
    real = {k: v for k, v in files.items() if k != "model.safetensors"} | {"pytorch_model.bin": weights.getvalue()}
    hub.repos["model", "openai/clip-vit-base-patch16"] = (commit, real)
    download_dataset(fx.CLIP_B16, tmp_path)
    assert has_dataset(fx.CLIP_B16, tmp_path)
    got = sorted(p.name for p in local_snapshot(fx.CLIP_B16, tmp_path).iterdir())
    assert "pytorch_model.bin" in got and not {"tf_model.h5", "flax_model.msgpack", ".gitattributes"} & set(got)
    clip, _ = load_clip("openai/clip-vit-base-patch16", tmp_path)
    name = "vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(clip.state_dict()[name], saved[name])  # the checkpoint's weights, not a random init


def test_a_snapshot_without_weights_is_missing(source, tmp_path):
    """Configs and a tokenizer are not a model: has_asset says no, and the loader says why in one line."""
    from trainables.data import DataMissing
    from trainables.hub import has_asset

    fx.build(tmp_path, only={fx.CLIP_B32})
    assert has_asset(fx.CLIP_B32, tmp_path)
    (local_snapshot(fx.CLIP_B32, tmp_path) / "model.safetensors").unlink()
    assert not has_asset(fx.CLIP_B32, tmp_path)
    with pytest.raises(DataMissing, match="no weights file"):
        local_snapshot(fx.CLIP_B32, tmp_path)


def test_a_failed_hub_download_leaves_no_folder_behind(hub, tmp_path, capsys):
    """Nothing of a download that failed stays: not the data folder it created, not an empty hub cache."""
    from orchestrator.cli import main

    hub.repos.pop(("model", "openai/clip-vit-base-patch16"))  # the Hub says: no such repository
    dst = tmp_path / "data"
    assert main(["lab3", "--study", "clip-lora", "--profile", "full", "--data-dir", str(dst), "--set",
                 "dataset=shapes", "--storage", str(tmp_path / "rr"), "--mlflow-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    assert "could not download hf-model:openai/clip-vit-base-patch16" in error_line(capsys)
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    dst.mkdir()
    with pytest.raises(Exception, match="could not download"):
        from trainables.hub import download_asset

        download_asset(fx.CLIP_B16, dst)
    assert list(dst.iterdir()) == []  # the data folder was there: kept, and nothing in it
