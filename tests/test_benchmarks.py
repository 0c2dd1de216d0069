"""The benchmark scripts run and print their ratio (speed claims live in benchmarks/README.md, never in
timed assertions here)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["data_path", "overhead", "logging_cost", "adversarial", "search", "posthoc"]


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
