"""The trained model a study starts from (`Study.source`), resolved by the driver before the study
runs: downloaded from MLflow into the study's inputs folder and checked against the study, so that
a missing, unreadable or unfit model is a one-line error before any run exists.

The study's config carries the answer in three fields: `source_run` (the MLflow run), `source_checkpoint`
(the absolute path of its checkpoint) and `source_cache` (set instead when no model fits: a folder
shared by the study's trials, where the first to train its own source model saves it for the others).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol

from .study import SourceModel, Study


class Lookup(Protocol):
    """What resolution asks MLflow (orchestrator.tracking.Lookup; a fake in tests)."""

    workdir: Path  # where downloads go: the study's storage, seen by every node

    def latest_best_run(self, experiment: str, studies: list[str]) -> str | None: ...

    def download_model(self, run_id: str, dest: Path) -> Path: ...


def resolve_source(study: Study, base: dict[str, Any], lookup: Lookup) -> dict[str, Any]:
    """The base config with the study's source model filled in (unchanged for a study without one):
    `--set source_checkpoint=PATH` or `--set source_run=ID` if given (must exist and fit), else the
    best trial of the latest invocation of the first group of `source.candidates` that fits, else
    none: the trials then train one (seeded, the first saves it in `source_cache` for the others).
    Raises ValueError / FileNotFoundError with a one-line message."""
    source = study.source
    if source is None:
        return base
    if base.get("source_checkpoint") and not base.get("source_run"):  # a path given with --set
        given = base["source_checkpoint"]
        try:
            cfg, model = source.load(given)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"source_checkpoint {given}: {e}") from None
        if (reason := source.conflict(cfg, model, base)) is not None:
            raise ValueError(f"source_checkpoint {given} cannot be the source: {reason}")
        return {**base, "source_checkpoint": str(Path(given).resolve())}
    if base.get("source_run"):
        path, reason = _fetch(source, base, lookup, base["source_run"])
        if reason is not None:
            raise ValueError(reason)
        return {**base, "source_checkpoint": path}
    tried: list[str] = []
    for studies in source.candidates:
        run_id = lookup.latest_best_run(source.lab or study.lab, list(studies))
        if run_id is None or run_id in tried:
            continue
        tried.append(run_id)
        path, reason = _fetch(source, base, lookup, run_id)
        if path is not None:
            return {**base, "source_run": run_id, "source_checkpoint": path}
        print(f"{reason}; looking further", flush=True)
    looked = "no source model in MLflow fits" if source.candidates else "no model given (--set source_run=...)"
    print(f"{looked}: {source.when_none.format(where=lookup.workdir)}", flush=True)
    return {**base, "source_run": "", "source_checkpoint": "", "source_cache": str(Path(lookup.workdir).resolve())}


def _fetch(source: SourceModel, base: dict[str, Any], lookup: Lookup, run_id: str) -> tuple[str | None, str | None]:
    """Downloads and checks a run's model: (path, None) when usable, (None, why not) when it
    conflicts with the study. A missing run or checkpoint, or an unreadable one, raises (one line)."""
    dest = lookup.workdir / f"source-{run_id}"
    new = _created_dirs(dest)
    try:
        path = lookup.download_model(run_id, dest)  # no progress bar: errors stay one line
        cfg, model = source.load(str(path))
        reason = source.conflict(cfg, model, base)
    except (ValueError, FileNotFoundError) as e:
        _remove(new, dest)
        raise type(e)(f"source run {run_id}: {e}") from None
    if reason is not None:
        _remove(new, dest)
        return None, f"run {run_id} cannot be the source: {reason}"
    classes = f" classes {','.join(map(str, cfg.classes))}" if getattr(cfg, "classes", ()) else ""
    print(f"source model: MLflow run {run_id} ({cfg.model} trained on {cfg.dataset}{classes})", flush=True)
    return str(Path(path).resolve()), None


def _created_dirs(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove(new: list[Path], dest: Path) -> None:
    """Leaves nothing behind of a rejected download: the folders it created, or its own folder."""
    shutil.rmtree(new[-1] if new else dest, ignore_errors=True)
