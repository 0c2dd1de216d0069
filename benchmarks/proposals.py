"""Faster versions of code in files the benchmarks' author does not own, measured side by side with
the originals and meant to replace them (see benchmarks/README.md):

- `batches` for trainables/data.py (benchmarks/data_path.py; bit-identical batches, tested in
  tests/test_benchmarks.py);
- `AsyncTracker` for orchestrator/tracking.py (benchmarks/logging_cost.py).

`batches` here is `trainables.data.batches` with the augmentation done on the uint8 images as ONE
gather (crop and flip fused into one index) before the float conversion, instead of a float
advanced-indexing crop and a float `torch.where` flip after it. Same random draws in the same order
(crop offsets dy, dx, then the flip coin), same zero padding, so the batches are bit-identical; on a
CPU it is ~4-6x faster (the advanced index `padded[batch, rows, cols]` is the slow part).
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from trainables.data import Split, to_float


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding=pad) with zero fill, then RandomHorizontalFlip, for a whole batch of
    any dtype, as one `gather` on the flattened padded planes."""
    b, c, h, w = x.shape
    device = x.device
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=gen)
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    else:
        dy = dx = torch.zeros(b, dtype=torch.long, device=device)
    cols = torch.arange(w, device=device).expand(b, w)
    if flip:  # a flipped image reads its crop's columns right to left
        mirrored = torch.rand(b, device=device, generator=gen) < 0.5
        cols = torch.where(mirrored[:, None], w - 1 - cols, cols)
    wp = w + 2 * max(pad, 0)
    rows = torch.arange(h, device=device)[None, :, None] + dy[:, None, None]       # (B, H, 1)
    index = (rows * wp + (cols + dx[:, None])[:, None, :]).view(b, 1, h * w)      # (B, 1, H*W)
    planes = x.reshape(b, c, -1)
    return planes.gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def batches(split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            crop_pad: int = 0, flip: bool = False, rank: int = 0, world_size: int = 1,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Drop-in for `trainables.data.batches` (same signature, same batches)."""
    device = split.x.device
    n = len(split)
    gen = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, device=device, generator=gen) if shuffle else torch.arange(n, device=device)
    per_rank = n // world_size if world_size > 1 else n
    order = order[rank * per_rank:(rank + 1) * per_rank]
    for start in range(0, per_rank, batch_size):
        idx = order[start:start + batch_size]
        x = split.x[idx]
        if crop_pad or flip:
            x = random_crop_flip(x, crop_pad, flip, gen)
        yield to_float(x), split.y[idx]


# ---------------------------------------------------------------- orchestrator/tracking.py
class AsyncTracker:
    """Wraps an `orchestrator.tracking.MlflowTracker` so that its Tune hooks return at once: each
    hook's work runs, in order, on ONE background writer thread (still a single MLflow writer, so
    SQLite stays safe), off Tune's event loop. A hook sees a snapshot of the trial (id, config,
    last result, checkpoint) taken when Tune called it, since Tune mutates trials afterwards.
    `close()` (and `rows()`) first drain the queue. Proposed as the tracker's own structure (a
    `tune.Callback` subclass there); here it is the measured stand-in (benchmarks/logging_cost.py)."""

    def __init__(self, tracker: Any) -> None:
        import queue
        import threading

        self.tracker = tracker
        self.queue: "queue.Queue[Any]" = queue.Queue()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (job := self.queue.get()) is not None:
            try:
                job()
            except BaseException as e:  # kept, re-raised by drain(): a logging failure is not lost
                self.errors.append(e)
            finally:
                self.queue.task_done()
        self.queue.task_done()

    @staticmethod
    def _snapshot(trial: Any) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(trial_id=trial.trial_id, config=dict(trial.config),
                               last_result=dict(trial.last_result or {}), checkpoint=trial.checkpoint,
                               error_file=getattr(trial, "error_file", ""))

    def _later(self, hook: str, *args: Any, trial: Any = None, **kwargs: Any) -> None:
        if trial is not None:
            kwargs["trial"] = self._snapshot(trial)
        self.queue.put(lambda: getattr(self.tracker, hook)(*args, **kwargs))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._later("on_trial_start", iteration, [], trial=trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._later("on_trial_result", iteration, [], trial=trial, result=dict(result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._later("on_trial_complete", iteration, [], trial=trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._later("on_trial_error", iteration, [], trial=trial)

    def drain(self) -> None:
        self.queue.join()
        if self.errors:
            raise self.errors[0]

    def rows(self) -> list[dict[str, Any]]:
        self.drain()
        return self.tracker.rows()

    def close(self, interrupted: bool = False) -> None:
        """Waits for the backlog, then ends the runs (even when a logging job failed, which is then raised)."""
        try:
            self.drain()
        finally:
            self.queue.put(None)
            self.thread.join()
            self.tracker.close(interrupted=interrupted)
