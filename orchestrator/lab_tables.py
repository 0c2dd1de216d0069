"""Tables across a lab's studies (the catalogs' TABLES, orchestrator.study.LabTable), from the study
invocations the report read back: pure functions of those records, so the report only reads MLflow.

- winners: one row per study, its selected trial (orchestrator.ranking: best epoch of the study's
  target, ties to the lower trial id) with the table's metrics: Lab 3's frozen / fine-tune / LoRA.
- scores: one row per (OOD set, score) of the selected trial of each `by` value (a cell of the
  study, or the set a `--set` run pinned), from the newest invocation that ran it, a column per
  measure (`auroc/msp`, ...): Lab 4's scores x sets.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .ranking import rank, trial_score
from .study import LabTable, Study

Records = Mapping[str, Any]  # orchestrator.tracking.read_invocation's {"parent": ..., "children": [...]}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def selected(study: Study, inv: Records) -> dict[str, Any] | None:
    """The invocation's selected trial: the best finished one by the study's ranking."""
    ranked = rank([r for r in inv["children"] if r["status"] == "FINISHED"], study.metric, study.mode)
    return ranked[0] if ranked else None


def winners(table: LabTable, found: Sequence[tuple[Study, Records | None]]) -> tuple[list[str], list[list[str]]]:
    headers = ["study", "selected run", *(f"best {m}" if i == 0 else m for i, m in enumerate(table.metrics))]
    rows = []
    for study, inv in found:
        top = selected(study, inv) if inv else None
        if top is None:
            rows.append([study.name, "not run" if inv is None else "no finished trial", *["-"] * len(table.metrics)])
            continue
        values = [trial_score(top, m) if m == study.metric else top["metrics"].get(m) for m in table.metrics]
        rows.append([study.name, str(top["name"]), *map(_fmt, values)])
    return headers, rows


def _value(run: Mapping[str, Any], key: str) -> str:
    return str(run["params"].get(key, run["sampled"].get(key, "?")))


def scores(table: LabTable, study: Study, invocations: Sequence[Records]) -> tuple[list[str], list[list[str]]]:
    """`invocations` newest first; each `table.by` value shows the trial selected among that value's
    trials of the newest invocation that has a finished one."""
    seen: dict[str, dict[str, Any]] = {}
    for inv in invocations:
        groups: dict[str, list[dict[str, Any]]] = {}
        for run in inv["children"]:
            groups.setdefault(_value(run, table.by), []).append(run)
        for key, runs in groups.items():
            if key not in seen and (top := selected(study, {"children": runs})) is not None:
                seen[key] = top
    headers = [table.by, "score", *table.measures, "selected run"]
    rows = [[key, score, *(_fmt(top["metrics"].get(f"{m}/{score}")) for m in table.measures), str(top["name"])]
            for key, top in sorted(seen.items()) for score in table.scores
            if any(f"{m}/{score}" in top["metrics"] for m in table.measures)]
    return headers, rows
