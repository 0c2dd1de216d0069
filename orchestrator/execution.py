"""Runs a study's trainable inside a Tune trial: in the trial process itself (one device), or under
Ray Train's TorchTrainer with DDP across workers (`workers > 1`, or `train_backend=ray-train`).

Why not always TorchTrainer: measured here, wrapping a trial in TorchTrainer(num_workers=1) costs
~15 s (CPU) to ~27 s (H200) of start-up per trial against ~3 s for a plain Tune function trial, and
its local mode (num_workers=0) breaks inside a Tune trial in Ray 2.60.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
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
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def uses_ray_train(self) -> bool:
        return self.workers > 1 or self.backend == "ray-train"

    def resolve(self, sampled: Mapping[str, Any]) -> Any:
        """The frozen config of one trial: base values, then what the search sampled."""
        return from_dict(get_study(self.lab, self.study).config_cls, {**self.base, **sampled})


def _checkpoint(state: Mapping[str, Any] | None, files: Mapping[str, bytes] | None, folder: str,
                cls: Any = ray.train.Checkpoint) -> Any:
    write_checkpoint(Path(folder), state, files)
    return cls.from_directory(folder)


def _restore(ckpt: ray.train.Checkpoint | None) -> dict[str, Any] | None:
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
            tune.report(result, checkpoint=_checkpoint(state, files, folder, tune.Checkpoint))

    def restore(self) -> dict[str, Any] | None:
        return _restore(tune.get_checkpoint())

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)


class TrainContext:
    """The trainable runs in one Ray Train worker; DDP across `world_size` workers."""

    def __init__(self, data_dir: str | None) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.data_dir = Path(data_dir) if data_dir else None
        self.device = ray.train.torch.get_device()

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None = None,
               files: Mapping[str, bytes] | None = None) -> None:
        # Every rank must call report; only rank 0 uploads a checkpoint (replicas are identical).
        with tempfile.TemporaryDirectory(prefix="dla-ckpt-") as folder:
            ckpt = _checkpoint(state, files, folder) if self.rank == 0 and (state is not None or files) else None
            ray.train.report(dict(metrics), checkpoint=ckpt)

    def restore(self) -> dict[str, Any] | None:
        return _restore(ray.train.get_checkpoint())

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)


class ForwardToTune(TuneReportCallback):
    """Rank 0's metrics go to Tune (as TuneReportCallback does), plus what only all ranks can tell:
    how many workers reported and whether their weights agree (DDP really in effect)."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        digests = [m["weights_digest"] for m in metrics if "weights_digest" in m]
        extra: dict[str, Any] = {"workers_reported": len(metrics)}
        if digests:
            extra["replicas_in_sync"] = float(max(digests) - min(digests) <= 1e-6 * max(1.0, abs(digests[0])))
        super().after_report(run_context, [{**metrics[0], **extra}] + metrics[1:], checkpoint)


def _train_worker(loop_config: dict[str, Any]) -> None:
    _quiet_storage_logs()
    spec: TrialSpec = loop_config["spec"]
    study = get_study(spec.lab, spec.study)
    study.trainable(from_dict(study.config_cls, loop_config["config"]), TrainContext(spec.data_dir))


def _fit_with_torch_trainer(spec: TrialSpec, config: Any) -> None:
    from ray.train.torch import TorchTrainer

    use_gpu = spec.gpus_per_worker > 0
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec": spec, "config": asdict(config)},
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        # Named after the Tune trial: a retried trial finds its Train checkpoints again.
        run_config=ray.train.RunConfig(name=f"train-{tune.get_context().get_trial_id()}", storage_path=spec.storage,
                                       callbacks=[ForwardToTune()],
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                       failure_config=ray.train.FailureConfig(max_failures=spec.max_failures)),
    )
    trainer.fit()


def _quiet_storage_logs() -> None:
    # One "Checkpoint successfully created" INFO line per epoch per trial drowns the progress table.
    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_trial(sampled: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function trainable: resolve the trial's config once, then train."""
    _quiet_storage_logs()
    config = spec.resolve(sampled)
    if spec.uses_ray_train:
        _fit_with_torch_trainer(spec, config)
        return
    study: Study = get_study(spec.lab, spec.study)
    study.trainable(config, TuneContext(spec.data_dir))
