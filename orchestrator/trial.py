"""What a trial shares whichever way it runs, in the Tune trial process (orchestrator/execution.py)
or in Ray Train workers (orchestrator/ray_train.py): the spec of the study invocation and the
checkpoint helpers of both contexts. execution.py imports ray_train.py (only for Ray Train trials),
so ray_train.py takes these from here: no import cycle."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from trainables.config import from_dict
from trainables.context import read_state, write_checkpoint

from .studies import get_study


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
    # The trials may evaluate the test split (trainables.context): off for a study's search, on for
    # its test phase and its --repeats. A spec pickled before this field reads the class default.
    evaluate_test: bool = True

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


def quiet_storage_logs() -> None:
    # One "Checkpoint successfully created" INFO line per epoch per trial drowns the progress table.
    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)
