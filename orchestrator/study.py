"""The records a catalog declares (orchestrator/catalog/<lab>.py): a Study, one Profile per scale,
the SourceModel a study starts from, the Findings it expects (judged by orchestrator.verdicts) and
the LabTables across studies. Keyword data only; the registry that finds every lab's
studies is orchestrator.studies (which re-exports these), the source is resolved by orchestrator.sources.

A Study names its trainable, its config class, its define-by-run search space, the metric it
optimises, and one Profile per scale (base config, trials per cell, datasets). `quick` runs offline
on bundled data in minutes on a 2-core CPU; `full` is the lab's real data and scale.

A study answers a comparative question, so it declares what it compares and what it tunes: its
`cells` are the combinations of the compared factors (`grid(depth=..., residual=...)`, or a list
where a factor only exists for some values of another); every other parameter of its space is a
nuisance parameter, tuned inside each cell. Each cell gets `per_cell` trials of the profile (the
search enqueues them, orchestrator.tuning), so the comparison has no empty cell.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    import optuna

PROFILES = ("quick", "full")

Cell = Mapping[str, Any]  # one combination of the compared factors, e.g. {"depth": 32, "residual": True}


# ---------------------------------------------------------------- findings (judged by orchestrator.verdicts)
DEEPEST, SHALLOWEST = "max", "min"


def same(value: Any, level: Any) -> bool:
    """Equality for factor values, where a bool matches only a bool (see the module docstring)."""
    if isinstance(value, bool) or isinstance(level, bool):
        return isinstance(value, bool) and isinstance(level, bool) and value is level
    return value == level


@dataclass(frozen=True, kw_only=True)
class Finding:
    """What the lab expects, as data: `treatment` beats `control` on `metric` by more than `margin`."""
    claim: str
    metric: str
    factor: str
    treatment: Any
    control: Any
    at: Mapping[str, Any] = field(default_factory=dict)
    labels: tuple[str, str] = ()
    margin: float = 0.0
    mode: str = "max"

    def __post_init__(self) -> None:
        for name in ("claim", "metric", "factor"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"Finding.{name} must be a non-empty string")
        if same(self.treatment, self.control):
            raise ValueError(f"Finding.treatment and Finding.control are the same level: {self.treatment!r}")
        if self.factor in self.at:
            raise ValueError(f"Finding.at must not fix the compared factor {self.factor!r}")
        if len(self.labels) not in (0, 2) or not all(isinstance(s, str) and s for s in self.labels):
            raise ValueError(f"Finding.labels must be () or two non-empty strings, got {self.labels!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not math.isfinite(self.margin):
            raise ValueError(f"Finding.margin must be a finite number, got {self.margin!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"Finding.mode must be one of ('max', 'min'), got {self.mode!r}")

    def names(self) -> tuple[str, str]:
        """Display names of (treatment, control): `labels`, else `factor=level`."""
        return self.labels or (f"{self.factor}={self.treatment}", f"{self.factor}={self.control}")


def grid(**factors: Sequence[Any]) -> tuple[dict[str, Any], ...]:
    """Every combination of the factors' values, the first factor varying slowest."""
    names = list(factors)
    return tuple(dict(zip(names, values)) for values in itertools.product(*factors.values()))


def cell_key(cell: Cell, factors: Sequence[str]) -> tuple[str, ...]:
    """A cell (or a trial's config) as a hashable key over `factors`; repr() so that 1 and True differ."""
    return tuple(repr(cell.get(f)) for f in factors)


@dataclass(frozen=True, kw_only=True)
class Profile:
    """One scale of a study: `quick` (offline, bundled data, minutes on a 2-core CPU) or `full`."""

    base: Mapping[str, Any]                        # the config values (fields of the study's config_cls)
    per_cell: int                                  # trials per cell (the default `--num-samples` is cells x this)
    datasets: tuple[str, ...] = ()                 # assets `run.py prefetch` fetches into --data-dir (pre-flight
                                                   # checks what each resolved config reads: orchestrator.preflight)
    # A base value the study's space also samples is a choice the space would override. Each such key
    # is declared: `pinned` keeps the base value (the space's suggestion is replaced, as `--set` pins);
    # `searched` lets the space choose (the base value is only the default outside a search, e.g.
    # in-process). tests/test_space_overrides.py checks that every overlap is declared.
    pinned: tuple[str, ...] = ()
    searched: tuple[str, ...] = ()
    # This scale's cells, where a compared factor's levels depend on the data it can read (Lab 4's
    # OOD sets: the bundled ones on quick, the real datasets on full); None: the study's cells.
    # Over the study's factors, and each one of the study's cells (pre-flight reads them).
    cells: tuple[Cell, ...] | None = None


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
    # what happens when none is given or found ({where}: the shared folder)
    when_none: str = "each trial trains the source CNN first (seeded; shared through {where})"


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
    # A trial's own figures, drawn by the driver from the trial's small JSON files (name -> parsed)
    # when it logs the trial: matplotlib off the trial (a probe's time is then its scoring).
    trial_figures: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    cells: tuple[Cell, ...] = ()                   # the compared factors' combinations (module docstring)
    source: SourceModel | None = None              # a trained model to start from, found before the study
    # The report's comparison table: one row per combination of these sampled params (best trial
    # of each), with these metrics; `references`: the lab's published numbers, shown for `full`.
    # With cells, report_by is their factors (it may be left out).
    report_by: tuple[str, ...] = ()
    report_metrics: tuple[str, ...] = ("val_acc", "test_acc")
    references: str = ""
    # The lab's numbers for some cells, as (the cell's values, the number as the lab states it): the
    # full profile's comparison table shows them in a column beside the measured ones.
    cell_references: tuple[tuple[Cell, str], ...] = ()
    findings: tuple[Finding, ...] = ()             # the lab's expected findings, judged by the report
    # Test once: the trainable reads `ctx.evaluate_test`; the search runs without the test split and
    # the selected configuration of each cell is trained again, with the search seed, and tested
    # (orchestrator/session.py). False: the trainable tests every trial it finishes.
    test_once: bool = False

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
            if profile.per_cell < 1:
                raise ValueError(f"study {self.key}, profile {name}: per_cell must be >= 1, got {profile.per_cell}")
            self._check_profile_cells(name, profile.cells)
        if self.cells:
            if self.report_by and tuple(self.report_by) != self.factors:
                raise ValueError(f"study {self.key}: report_by {self.report_by} is not its cells' factors {self.factors}")
            object.__setattr__(self, "report_by", self.factors)
            if len({cell_key(c, self.factors) for c in self.cells}) != len(self.cells):
                raise ValueError(f"study {self.key}: a cell is listed twice")
        for cell, _ in self.cell_references:
            if not set(cell) <= set(self.factors):
                raise ValueError(f"study {self.key}: reference cell {dict(cell)} is not over its factors {self.factors}")
        for finding in self.findings:
            if finding.factor not in self.factors or not set(finding.at) <= set(self.factors):
                raise ValueError(f"study {self.key}: finding {finding.claim!r} is not about its compared factors "
                                 f"{self.factors}")

    def _check_profile_cells(self, name: str, cells: tuple[Cell, ...] | None) -> None:
        if cells is None:
            return
        known = {cell_key(c, self.factors) for c in self.cells}
        keys = [cell_key(c, self.factors) for c in cells]
        if not cells or any(set(c) != set(self.factors) for c in cells) or not set(keys) <= known \
                or len(set(keys)) != len(keys):
            raise ValueError(f"study {self.key}, profile {name}: its cells must be distinct cells of the study "
                             f"(over {self.factors}), got {cells}")

    @property
    def key(self) -> str:
        return f"{self.lab}/{self.name}"

    def reference_for(self, params: Mapping[str, Any]) -> str:
        """The lab's number for the cell of `params` (a trial's sampled values), or ""."""
        return next((text for cell, text in self.cell_references
                     if all(cell_key(params, (k,)) == cell_key(cell, (k,)) for k in cell)), "")

    def base_config(self, profile: str) -> dict[str, Any]:
        return dict(self.profiles[profile].base)

    @property
    def factors(self) -> tuple[str, ...]:
        """The compared factors: every key of a cell, in first-seen order."""
        return tuple(dict.fromkeys(k for cell in self.cells for k in cell))

    def cells_of(self, profile: str | None = None) -> tuple[Cell, ...]:
        """The cells a profile runs (its own, else the study's); profile None: the study's."""
        own = self.profiles[profile].cells if profile is not None else None
        return self.cells if own is None else own

    def cells_for(self, pins: Mapping[str, Any] = {}, profile: str | None = None) -> tuple[dict[str, Any], ...]:
        """The cells of `profile` left once `pins` (`--set`) fix some factors: those factors leave the
        cells (a pinned depth compares residual at that depth). A study without cells has one, empty."""
        kept = [f for f in self.factors if f not in pins]
        cells = {cell_key(c, kept): {f: c[f] for f in kept if f in c} for c in self.cells_of(profile)}
        return tuple(c for c in cells.values() if c) or ({},)

    def trials(self, profile: str, pins: Mapping[str, Any] = {}) -> int:
        """The default budget: `per_cell` trials for each cell of the profile left after the pins
        (`--set` ones and the profile's `pinned`)."""
        chosen = self.profiles[profile]
        return len(self.cells_for({**{k: chosen.base[k] for k in chosen.pinned}, **pins}, profile)) * chosen.per_cell


@dataclass(frozen=True, kw_only=True)
class LabTable:
    """A table across studies of one lab (a catalog's TABLES), built by the report from each study's
    latest invocation: `winners`, one row per study (its selected trial's metrics: Lab 3's frozen /
    fine-tune / LoRA side by side); `scores`, one row per (`by` value, score) of one study's
    winners, with `measures` of each `<measure>/<score>` metric (Lab 4's scores x OOD sets)."""

    title: str
    kind: str                                      # "winners" | "scores"
    studies: tuple[str, ...]
    metrics: tuple[str, ...] = ()                  # winners: the columns
    scores: tuple[str, ...] = ()                   # scores: the rows' scores
    measures: tuple[str, ...] = ()                 # scores: the columns
    by: str = ""                                   # scores: the param that tells invocations apart (ood_set)

    def __post_init__(self) -> None:
        if self.kind not in ("winners", "scores") or not self.studies:
            raise ValueError(f"table {self.title!r}: kind must be winners or scores, with studies")
