"""The registry: every lab's studies, as data (orchestrator/catalog/<lab>.py, each a STUDIES list of
the records in orchestrator.study, re-exported here), found by lab and name; and `describe_space`.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING, Any, Callable

from .study import PROFILES, LabTable, Profile, SourceModel, Study

if TYPE_CHECKING:
    import optuna

__all__ = ["PROFILES", "LabTable", "Profile", "SourceModel", "Study", "all_studies", "describe_space", "get_study",
           "labs", "studies_of", "tables_of"]


# Catalogs are imported per lab, on first use: a trial process then imports only its own lab's
# trainables (Lab 3's transformers and Lab 1's grad-cam cost seconds of start-up per trial process).
def labs() -> list[str]:
    """Each module of `orchestrator.catalog` is one lab."""
    from . import catalog

    return sorted(m.name for m in pkgutil.iter_modules(catalog.__path__) if not m.name.startswith("_"))


@cache
def studies_of(lab: str) -> list[Study]:
    """The lab's STUDIES list, in running order."""
    if lab not in labs():
        raise KeyError(f"unknown lab {lab!r} (known: {', '.join(labs())})")
    return list(importlib.import_module(f"{__package__}.catalog.{lab}").STUDIES)


def tables_of(lab: str) -> list[LabTable]:
    """The lab's TABLES across its studies (none when the catalog declares none)."""
    studies_of(lab)  # the lab exists
    return list(getattr(importlib.import_module(f"{__package__}.catalog.{lab}"), "TABLES", ()))


def all_studies() -> list[Study]:
    return [s for lab in labs() for s in studies_of(lab)]


def get_study(lab: str, name: str) -> Study:
    for study in studies_of(lab):
        if study.name == name:
            return study
    raise KeyError(f"unknown study {name!r} for {lab} (known: {', '.join(s.name for s in studies_of(lab))})")


def describe_space(space: Callable[["optuna.Trial"], Any], probes: int = 64) -> dict[str, str]:
    """Every parameter a define-by-run space can produce, with its distribution, found by running it
    on `probes` random Optuna trials (so conditional branches show up too)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    found: dict[str, set[str]] = {}
    for _ in range(probes):
        trial = study.ask()
        space(trial)
        for name, dist in trial.distributions.items():
            found.setdefault(name, set()).add(_describe(dist))
        study.tell(trial, 0.0)
    return {name: " | ".join(sorted(kinds)) for name, kinds in found.items()}


def _describe(dist: "optuna.distributions.BaseDistribution") -> str:
    import optuna

    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return "{" + ", ".join(map(str, dist.choices)) + "}"
    scale = " log" if getattr(dist, "log", False) else ""
    return f"[{dist.low:g}, {dist.high:g}]{scale}"
