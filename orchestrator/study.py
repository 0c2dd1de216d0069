"""The records a catalog declares (orchestrator/catalog/<lab>.py): a Study, one Profile per scale,
and the SourceModel a study starts from. Keyword data only; the registry that finds every lab's
studies is orchestrator.studies (which re-exports these), the source is resolved by orchestrator.sources.

A Study names its trainable, its config class, its define-by-run search space, the metric it
optimises, and one Profile per scale (base config, default trials, datasets). `quick` runs offline
on bundled data in minutes on a 2-core CPU; `full` is the lab's real data and scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import optuna

PROFILES = ("quick", "full")


@dataclass(frozen=True, kw_only=True)
class Profile:
    """One scale of a study: `quick` (offline, bundled data, minutes on a 2-core CPU) or `full`."""

    base: Mapping[str, Any]                        # the config values (fields of the study's config_cls)
    trials: int                                    # default number of trials (`--num-samples`)
    datasets: tuple[str, ...] = ()                 # assets `run.py prefetch` fetches into --data-dir (pre-flight
                                                   # checks what each resolved config reads: orchestrator.preflight)
    # A base value the study's space also samples is a choice the space would override. Each such key
    # is declared: `pinned` keeps the base value (the space's suggestion is replaced, as `--set` pins);
    # `searched` lets the space choose (the base value is only the default outside a search, e.g.
    # in-process). tests/test_space_overrides.py checks that every overlap is declared.
    pinned: tuple[str, ...] = ()
    searched: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SourceModel:
    """A trained model a study starts from, resolved by the driver before the study runs
    (orchestrator.sources): `--set source_checkpoint=PATH` or `--set source_run=ID` if given (it must
    fit), else the best trial of the latest invocation of the first group of `candidates` that has a
    fitting one, else none (the trials train their own: `source_cache` is set). The study's config
    has the fields `source_run`, `source_checkpoint` and `source_cache`."""

    candidates: tuple[tuple[str, ...], ...]        # groups of study names, searched in turn
    load: Callable[[str], tuple[Any, Any]]         # checkpoint path -> (its config, the model)
    conflict: Callable[[Any, Any, Mapping[str, Any]], str | None]  # (config, model, base) -> why unfit, or None
    lab: str = ""                                  # MLflow experiment of the candidates; "": the study's lab


@dataclass(frozen=True, kw_only=True)
class Study:
    lab: str
    name: str
    question: str                                  # what the study answers (shown by `list`)
    trainable: Callable[[Any, Any], Any]           # train(config, ctx)
    config_cls: type
    space: Callable[["optuna.Trial"], Any]
    profiles: Mapping[str, Profile]                # one per name in PROFILES
    metric: str = "val_acc"
    mode: str = "max"
    early_stopping: bool = True                    # ASHA on `metric` over epochs
    grace_period: int = 2                          # epochs before ASHA may stop a trial
    gpus_per_trial: float = 1.0                    # default packing on GPU machines
    compare: Callable[[list[dict]], Any] | None = None  # parent-run figure from the trial rows
    source: SourceModel | None = None              # a trained model to start from, found before the study
    # The report's comparison table: one row per combination of these sampled params (best trial
    # of each), with these metrics; `references`: the lab's published numbers, shown for `full`.
    report_by: tuple[str, ...] = ()
    report_metrics: tuple[str, ...] = ("val_acc", "test_acc")
    references: str = ""

    def __post_init__(self) -> None:
        if set(self.profiles) != set(PROFILES):
            raise ValueError(f"study {self.key}: profiles must be {PROFILES}, got {tuple(self.profiles)}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"study {self.key}: mode must be 'max' or 'min', got {self.mode!r}")
        for name, profile in self.profiles.items():
            declared = set(profile.pinned) | set(profile.searched)
            if not declared <= set(profile.base) or set(profile.pinned) & set(profile.searched):
                raise ValueError(f"study {self.key}, profile {name}: pinned and searched must be distinct keys "
                                 f"of its base, got pinned={profile.pinned}, searched={profile.searched}")

    @property
    def key(self) -> str:
        return f"{self.lab}/{self.name}"

    def base_config(self, profile: str) -> dict[str, Any]:
        return dict(self.profiles[profile].base)
