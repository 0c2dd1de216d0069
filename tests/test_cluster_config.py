"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own validator), and typos are caught."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid():
    config = prepare_config(copy.deepcopy(CONFIG))
    validate_config(config)
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert any("pip install" in c and "-e ~/dla" in c for c in config["setup_commands"])


@pytest.mark.parametrize("breakage", ["typo", "missing_head_type"])
def test_broken_copies_are_rejected(breakage):
    broken = copy.deepcopy(CONFIG)
    if breakage == "typo":
        broken["available_node_types"]["gpu_worker"]["min_worker"] = 0
    else:
        broken["head_node_type"] = "no-such-type"
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))


LOCAL = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster-local.yaml").read_text())


def test_cluster_local_yaml_is_cluster_yaml_for_the_local_provider():
    """The transformation cluster-local.yaml's header documents, and nothing else."""
    filled = copy.deepcopy(LOCAL)
    filled["provider"].update(head_ip="10.0.0.1", worker_ips=["10.0.0.2"])
    validate_config(prepare_config(filled))   # what `ray up` runs first
    assert LOCAL["provider"]["type"] == "local" and "available_node_types" not in LOCAL
    for key in ("file_mounts", "rsync_exclude", "initialization_commands", "setup_commands",
                "worker_start_ray_commands", "upscaling_speed", "idle_timeout_minutes"):
        assert LOCAL[key] == CONFIG[key], key
    assert CONFIG["available_node_types"][CONFIG["head_node_type"]]["resources"] == {"CPU": 0}
    assert LOCAL["head_start_ray_commands"] == [
        c.replace("ray start --head", "RAY_enable_autoscaler_v2=0 ray start --head --num-cpus=0")
        for c in CONFIG["head_start_ray_commands"]]


def test_setup_installs_into_the_python_that_ray_submit_runs():
    """`ray submit` runs `python ~/run.py` from the login PATH; setup puts ~/dla-venv/bin first on it and
    runs every pip through that venv's python, whose version the project supports."""
    setup = CONFIG["setup_commands"]
    assert any("python3.11 -m venv ~/dla-venv" in c for c in setup)
    assert any("export PATH=\"$HOME/dla-venv/bin:$PATH\"" in c and ">> ~/.bashrc" in c for c in setup)
    pips = [c for c in setup if "pip install" in c]
    assert pips and all(c.startswith("~/dla-venv/bin/python -m pip install") for c in pips)
    assert any(c.endswith("-e ~/dla") for c in pips) and "~/dla" in CONFIG["file_mounts"]
    requires = yaml.safe_load("x: " + (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
                              .split("requires-python = ", 1)[1].splitlines()[0])["x"]
    assert requires == ">=3.11"
