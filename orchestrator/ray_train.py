"""The Ray Train side of a trial (DDP across `spec.workers` workers): imported by a trial process
only when its study runs under TorchTrainer, since `ray.train.torch` alone adds seconds to the
start-up of every other trial process."""
from __future__ import annotations

import os  # [cluster #13]
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import ray
import ray.train
import ray.train.torch
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
import torch  # [cluster #13]
from torch import nn

from trainables.config import from_dict
from trainables.context import final_mark

from .trial import TrialSpec, make_checkpoint, quiet_storage_logs, restore_state
from .studies import get_study


class TrainContext:
    """The trainable runs in one Ray Train worker; DDP across `world_size` workers."""

    gpu_slot = ""  # "node:gpu ids" of this rank (reported, so a test can see DDP ranks on distinct GPUs)

    def __init__(self, data_dir: str | None, evaluate_test: bool = True) -> None:
        ctx = ray.train.get_context()
        self.evaluate_test = evaluate_test
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.data_dir = Path(data_dir) if data_dir else None
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():  # [cluster #13] as TuneContext does:
            self.device = torch.device("cpu")  # a node's declared GPUs may be ones torch cannot see (fake GPUs)
        gpus = sorted(str(g) for g in ray.get_gpu_ids())  # [cluster #13] the GPU(s) this rank holds, on its node
        self.gpu_slot = f"{ray.get_runtime_context().get_node_id()}:{','.join(gpus)}" if gpus else ""

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None = None,
               files: Mapping[str, bytes] | None = None, final: bool = False) -> None:
        # Every rank must call report; only rank 0 uploads a checkpoint (replicas are identical).
        with tempfile.TemporaryDirectory(prefix="dla-ckpt-") as folder:
            has_checkpoint = self.rank == 0 and (state is not None or files)
            ckpt = make_checkpoint(state, files, folder, ray.train.Checkpoint) if has_checkpoint else None
            ray.train.report({**metrics, **final_mark(final), "gpu_slot": self.gpu_slot},  # [cluster #13] gpu_slot
                             checkpoint=ckpt)

    def restore(self) -> dict[str, Any] | None:
        return restore_state(ray.train.get_checkpoint())

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model, move_to_device=self.device)  # [cluster #13] self.device


class ForwardToTune(TuneReportCallback):
    """Rank 0's metrics go to Tune (as TuneReportCallback does), plus what only all ranks can tell:
    how many workers reported, whether their weights agree (DDP really in effect) and on how many
    distinct GPUs the ranks ran (NCCL refuses two ranks on one GPU)."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        digests = [m["weights_digest"] for m in metrics if "weights_digest" in m]
        slots = {m.pop("gpu_slot", "") for m in metrics} - {""}  # [cluster #13]
        extra: dict[str, Any] = {"workers_reported": len(metrics), "distinct_gpus": len(slots)}  # [cluster #13]
        if digests:
            extra["replicas_in_sync"] = float(max(digests) - min(digests) <= 1e-6 * max(1.0, abs(digests[0])))
        super().after_report(run_context, [{**metrics[0], **extra}] + metrics[1:], checkpoint)


def _train_worker(loop_config: dict[str, Any]) -> None:
    quiet_storage_logs()
    spec: TrialSpec = loop_config["spec"]
    study = get_study(spec.lab, spec.study)
    study.trainable(from_dict(study.config_cls, loop_config["config"]), TrainContext(spec.data_dir, spec.evaluate_test))


def fit_with_torch_trainer(spec: TrialSpec, config: Any) -> None:
    use_gpu = spec.gpus_per_worker > 0
    # [cluster #13] DLA_DDP_BACKEND overrides Ray's choice (nccl with GPUs, else gloo): gloo where nodes
    # declare GPUs torch cannot see (AutoscalingCluster's fake GPUs), since NCCL refuses to start without
    # CUDA (torch 2.14 creates the NCCL group eagerly, even for "cpu:gloo,cuda:nccl").
    torch_config = TorchConfig(backend=os.environ["DLA_DDP_BACKEND"]) if os.environ.get("DLA_DDP_BACKEND") else None
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec": spec, "config": asdict(config)},
        torch_config=torch_config,  # [cluster #13]
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        # Named after the Tune trial: a retried trial finds its Train checkpoints again.
        run_config=ray.train.RunConfig(name=f"train-{tune.get_context().get_trial_id()}", storage_path=spec.storage,
                                       callbacks=[ForwardToTune()],
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                       failure_config=ray.train.FailureConfig(max_failures=spec.max_failures)),
    )
    trainer.fit()
