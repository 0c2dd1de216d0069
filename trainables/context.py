"""The small protocol a trainable receives, so one function runs in-process, in a Tune trial and in
a Ray Train worker.

The trainable calls `ctx.report(metrics, state=..., files=...)` once per epoch. `state` is a dict of
tensors/plain values saved as the epoch's checkpoint (what `ctx.restore()` gives back after a
retry); `files` maps a relative path to bytes (figures, configs) that travel inside that
checkpoint, which is how they reach the tracker complete (a checkpoint is persisted before its
result is seen by the driver; a trial's working folder is synced later, if at all).

The last report of a trial that ran to its end says so, `final=True`: the Ray contexts add
`FINAL_KEY: 1` to that result, so the tracker knows a finished trial from one a scheduler stopped
without guessing from metric names; LocalContext sets `finished`.

`evaluate_test`: whether the trainable may touch its test split. A study's search trials run with
it off (selection is on validation); the selected configuration of each compared cell is trained
again with it on, and only those numbers (and --repeats') are test numbers (orchestrator/session.py).
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

import torch
from torch import nn

STATE_FILE = "state.pt"
FILES_DIR = "files"
FINAL_KEY = "final"  # result key set on a trial's last report (the trial ran to its end)


def final_mark(final: bool) -> dict[str, int]:
    """What a Ray context adds to a reported result: {FINAL_KEY: 1} on the last one, else nothing."""
    return {FINAL_KEY: 1} if final else {}


class Context(Protocol):
    device: torch.device
    rank: int
    world_size: int
    data_dir: Path | None
    evaluate_test: bool

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None = None,
               files: Mapping[str, bytes] | None = None, final: bool = False) -> None: ...

    def restore(self) -> dict[str, Any] | None: ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...


def write_checkpoint(folder: Path, state: Mapping[str, Any] | None, files: Mapping[str, bytes] | None) -> None:
    """Lays a checkpoint out on disk: state.pt (torch.save) and files/<name>."""
    folder.mkdir(parents=True, exist_ok=True)
    if state is not None:
        torch.save(dict(state), folder / STATE_FILE)
    for name, data in (files or {}).items():
        path = folder / FILES_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read_state(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / STATE_FILE
    if not path.exists():
        return None
    # weights_only: a checkpoint is data, never code to run.
    return torch.load(path, map_location="cpu", weights_only=True)


def read_model_file(path: str | Path, kind: str = "model") -> dict[str, Any]:
    """A saved {"model": state dict, "config": dict, ...} (the tracker's `model.pt`). One-line errors
    without the path (callers say which file): FileNotFoundError when missing, ValueError when it is
    not a `kind` checkpoint."""
    if not Path(path).is_file():
        raise FileNotFoundError("checkpoint file does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # data, never code
    except Exception as e:  # truncated zip, pickle garbage, disallowed globals, ...
        raise ValueError(f"checkpoint is unreadable ({type(e).__name__})") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and isinstance(ckpt.get("config"), dict)):
        raise ValueError(f"not a {kind} checkpoint (needs 'model' and 'config')")
    return ckpt


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def figure_bytes(fig: Any) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards, so long studies don't leak figures)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class LocalContext:
    """In-process context for tests and notebooks: keeps reports in memory, checkpoints optional.
    `final_flags[i]` is the `final` of report i; `finished`: the last report was marked final."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    data_dir: Path | None = None
    evaluate_test: bool = True
    checkpoint_dir: Path | None = None
    reports: list[dict[str, float]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    last_state: dict[str, Any] | None = None
    final_flags: list[bool] = field(default_factory=list)
    finished: bool = False

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None = None,
               files: Mapping[str, bytes] | None = None, final: bool = False) -> None:
        self.reports.append(dict(metrics))
        self.final_flags.append(bool(final))
        self.finished = bool(final)
        self.files.update(files or {})
        if state is not None:
            self.last_state = dict(state)
            if self.checkpoint_dir is not None:
                write_checkpoint(self.checkpoint_dir, state, files)

    def restore(self) -> dict[str, Any] | None:
        if self.checkpoint_dir is None:
            return None
        return read_state(self.checkpoint_dir)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    @property
    def final(self) -> dict[str, float]:
        return self.reports[-1] if self.reports else {}


def scratch_dir() -> Path:
    """A fresh temporary folder for building a checkpoint before handing it to Ray."""
    return Path(tempfile.mkdtemp(prefix="dla-ckpt-", dir=os.environ.get("DLA_TMP")))


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (flock: the kernel releases it if the holder dies), so that of the
    trials sharing a folder one trains the model they need and the others wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
