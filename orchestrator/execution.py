"""Runs a study's trainable inside a Tune trial: in the trial process itself (one device), or under
Ray Train's TorchTrainer with DDP across workers (`workers > 1`, or `train_backend=ray-train`;
`orchestrator/ray_train.py`, imported only then).

Why not always TorchTrainer: measured here, wrapping a trial in TorchTrainer(num_workers=1) costs
~15 s (CPU) to ~27 s (H200) of start-up per trial against ~3 s for a plain Tune function trial, and
its local mode (num_workers=0) breaks inside a Tune trial in Ray 2.60.

Start-up matters (benchmarks/overhead.py): a trial process imports this module, its own lab's
catalog and torch, nothing more (no ray.train.torch, no other lab's trainables).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import ray
import torch
from ray import tune
from torch import nn

from trainables.config import from_dict
from trainables.context import read_state, write_checkpoint

from .studies import Study, get_study


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of one study invocation shares (sent to the trial processes once)."""

    lab: str
    study: str
    base: Mapping[str, Any]               # profile values + --set overrides
    pins: Mapping[str, Any] = field(default_factory=dict)  # the --set overrides: searched keys stay fixed
    data_dir: str | None = None
    workers: int = 1                      # Ray Train workers per trial (DDP when > 1)
    backend: str = "auto"                 # "auto" | "ray-train"
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    storage: str = ""
    max_failures: int = 0

    @property
    def uses_ray_train(self) -> bool:
        return self.workers > 1 or self.backend == "ray-train"

    def resolve(self, sampled: Mapping[str, Any]) -> Any:
        """The frozen config of one trial: base values, then what the search sampled."""
        return from_dict(get_study(self.lab, self.study).config_cls, {**self.base, **sampled})


def make_checkpoint(state: Mapping[str, Any] | None, files: Mapping[str, bytes] | None, folder: str,
                    cls: Any) -> Any:
    write_checkpoint(Path(folder), state, files)
    return cls.from_directory(folder)


def restore_state(ckpt: Any) -> dict[str, Any] | None:
    if ckpt is None:
        return None
    with ckpt.as_directory() as folder:
        return read_state(Path(folder))


class TuneContext:
    """The trainable runs in the Tune trial process: one device, rank 0 of 1."""

    rank, world_size = 0, 1

    def __init__(self, data_dir: str | None) -> None:
        self.data_dir = Path(data_dir) if data_dir else None
        self.device = torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
        self.node_id = ray.get_runtime_context().get_node_id()  # tagged on the trial's run by the tracker

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None = None,
               files: Mapping[str, bytes] | None = None) -> None:
        result = {**metrics, "node_id": self.node_id}
        if state is None and not files:
            tune.report(result)
            return
        # tune.report copies the checkpoint into storage before returning: the temp folder can go.
        with tempfile.TemporaryDirectory(prefix="dla-ckpt-") as folder:
            tune.report(result, checkpoint=make_checkpoint(state, files, folder, tune.Checkpoint))

    def restore(self) -> dict[str, Any] | None:
        return restore_state(tune.get_checkpoint())

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)


def quiet_storage_logs() -> None:
    # One "Checkpoint successfully created" INFO line per epoch per trial drowns the progress table.
    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_trial(sampled: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function trainable: resolve the trial's config once, then train."""
    quiet_storage_logs()
    config = spec.resolve(sampled)
    if spec.uses_ray_train:
        from .ray_train import fit_with_torch_trainer

        fit_with_torch_trainer(spec, config)
        return
    study: Study = get_study(spec.lab, spec.study)
    study.trainable(config, TuneContext(spec.data_dir))
