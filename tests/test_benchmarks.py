"""The benchmark scripts run and print their ratio (speed claims live in benchmarks/README.md, never in
timed assertions here), and the faster replacements they propose behave exactly like the originals."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import FakeTrial

from trainables.data import Split, batches

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["data_path", "overhead", "logging_cost", "adversarial", "search"]


def _load(name: str) -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the scripts import their neighbours (common, proposals)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pad,flip,world_size",
                         [(4, True, 1), (0, True, 1), (4, False, 1), (1, True, 2), (0, False, 1)])
def test_proposed_batches_are_bit_identical_to_the_project_loader(pad, flip, world_size):
    proposals = _load("proposals")
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (300, 3, 12, 10), dtype=torch.uint8, generator=gen),
                  torch.randint(0, 10, (300,), generator=gen))
    for rank in range(world_size):
        kwargs = dict(shuffle=True, seed=3, epoch=2, crop_pad=pad, flip=flip, rank=rank, world_size=world_size)
        ours = list(proposals.batches(split, 64, **kwargs))
        theirs = list(batches(split, 64, **kwargs))
        assert len(ours) == len(theirs) > 0
        for (x1, y1), (x2, y2) in zip(ours, theirs):
            assert x1.dtype == x2.dtype == torch.float32
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_proposed_crop_moves_pixels_and_fills_with_zeros():
    proposals = _load("proposals")
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = proposals.random_crop_flip(x, 1, False, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert (out == 0).any()  # some shifted images show the zero border
    assert any(torch.equal(o, x[0]) for o in out)  # and some drew the zero shift


def test_async_tracker_logs_what_the_tracker_logs_and_reports_failures(tmp_path):
    import mlflow

    from orchestrator.tracking import MlflowTracker
    from trainables.lab1 import Lab1Config

    proposals = _load("proposals")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = proposals.AsyncTracker(MlflowTracker(uri, "lab1", "bench", tags={}, params={},
                                                   resolve=lambda c: Lab1Config(**c), flush_s=0.0))
    trial = FakeTrial("t0", {"depth": 2})
    tracker.on_trial_start(0, [], trial)
    for e in (1, 2):
        trial.last_result = {"epoch": e, "val_acc": 0.4 * e, "done": e == 2, "test_acc": 0.7}
        tracker.on_trial_result(0, [], trial, dict(trial.last_result))
    trial.last_result = {"epoch": 99}  # Tune mutates trials later: the hook must have kept its snapshot
    tracker.on_trial_complete(0, [], trial)
    assert tracker.rows()[0]["metrics"]["val_acc"] == pytest.approx(0.8)
    tracker.close()
    client = mlflow.MlflowClient(uri)
    run = client.get_run(tracker.tracker.runs["t0"])
    assert run.info.status == "FINISHED" and run.data.params["depth"] == "2"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_acc")] == pytest.approx([0.4, 0.8])

    broken = proposals.AsyncTracker(MlflowTracker(uri, "lab1", "bench", tags={}, params={},
                                                  resolve=lambda c: Lab1Config(**c), flush_s=0.0))
    broken.on_trial_start(0, [], FakeTrial("t1", {"no_such_key": 1}))  # resolve() raises in the writer
    with pytest.raises(TypeError):
        broken.close()


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_each_benchmark_runs_quick_and_prints_its_ratio(script, tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--quick", "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"ratio .+: [0-9.]+(e[+-]?\d+)?|ratio .+: inf", out.stdout), out.stdout[-2000:]
    assert re.search(r"goal (<=|>=) [0-9.]+ +(PASS|FAIL)", out.stdout)
    assert "machine:" in out.stdout and "cores" in out.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["mode"] == "quick" and "ratio" in result and result["machine"]["torch"]


@pytest.mark.slow
def test_gpu_script_smoke_test_on_cpu(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    for section in ("loader_vs_raw", "resnet18_epoch", "packing", "transformers"):
        assert "error" not in result[section] and "skipped" not in result[section], result[section]
    assert set(result["loader_vs_raw"]) >= {"cnn", "resnet18"}
    assert [k for k in result["packing"] if k.startswith("k=")] == ["k=1", "k=2"]
    assert result["transformers"]["clip-vit-b16 lora-qkv-r2"]["bf16"] > 0
    assert "TINY SIZES" in out.stdout
