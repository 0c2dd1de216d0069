"""The registry: every lab's studies, as data.

A Study names its trainable, its config class, its define-by-run search space, the metric it
optimises, and per-profile base configs. `quick` runs offline on bundled data in minutes on a
2-core CPU; `full` is the lab's real data and scale.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import optuna

PROFILES = ("quick", "full")


@dataclass(frozen=True)
class Study:
    lab: str
    name: str
    question: str                                  # what the study answers (shown by `list`)
    trainable: Callable[[Any, Any], Any]           # train(config, ctx)
    config_cls: type
    space: Callable[["optuna.Trial"], Any]
    profiles: Mapping[str, Mapping[str, Any]]      # profile -> base config values
    num_samples: Mapping[str, int]                 # profile -> default number of trials
    metric: str = "val_acc"
    mode: str = "max"
    early_stopping: bool = True                    # ASHA on `metric` over epochs
    grace_period: int = 2                          # epochs before ASHA may stop a trial
    gpus_per_trial: float = 1.0                    # default packing on GPU machines
    compare: Callable[[list[dict]], Any] | None = None  # parent-run figure from the trial rows
    datasets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # profile -> datasets/assets needed
    # Driver-side step before the study runs (e.g. find a source model in MLflow): gets the base
    # config and an `orchestrator.tracking.Lookup`, returns the base config to use. Raising
    # ValueError/FileNotFoundError turns into a one-line error (exit 2) before any run is created.
    prepare: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    # The report's comparison table: one row per combination of these sampled params (best trial
    # of each), with these metrics; `references`: the lab's published numbers, shown for `full`.
    report_by: tuple[str, ...] = ()
    report_metrics: tuple[str, ...] = ("val_acc", "test_acc")
    references: str = ""

    @property
    def key(self) -> str:
        return f"{self.lab}/{self.name}"

    def base_config(self, profile: str) -> dict[str, Any]:
        return dict(self.profiles[profile])


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
