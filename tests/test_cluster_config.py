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
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])


@pytest.mark.parametrize("breakage", ["typo", "missing_head_type"])
def test_broken_copies_are_rejected(breakage):
    broken = copy.deepcopy(CONFIG)
    if breakage == "typo":
        broken["available_node_types"]["gpu_worker"]["min_worker"] = 0
    else:
        broken["head_node_type"] = "no-such-type"
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))
