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

import tempfile
from pathlib import Path
from typing import Any, Mapping

import ray
import torch
from ray import tune
from torch import nn

from trainables.context import final_mark

from .studies import Study, get_study
from .trial import TrialSpec, make_checkpoint, quiet_storage_logs, restore_state  # TrialSpec: importable here too


class TuneContext:
    """The trainable runs in the Tune trial process: one device, rank 0 of 1."""

    rank, world_size = 0, 1

    def __init__(self, data_dir: str | None, evaluate_test: bool = True) -> None:
        self.data_dir = Path(data_dir) if data_dir else None
        self.evaluate_test = evaluate_test
        self.device = torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
        self.node_id = ray.get_runtime_context().get_node_id()  # tagged on the trial's run by the tracker

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None = None,
               files: Mapping[str, bytes] | None = None, final: bool = False) -> None:
        result = {**metrics, "node_id": self.node_id, **final_mark(final)}
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


def run_trial(sampled: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function trainable: resolve the trial's config once, then train."""
    quiet_storage_logs()
    config = spec.resolve(sampled)
    if spec.uses_ray_train:
        from .ray_train import fit_with_torch_trainer

        fit_with_torch_trainer(spec, config)
        return
    study: Study = get_study(spec.lab, spec.study)
    study.trainable(config, TuneContext(spec.data_dir, spec.evaluate_test))
