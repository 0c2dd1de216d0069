"""What the MLflow UI shows of a study at a glance, as plain data and Markdown (no MLflow calls here).

- The parent run's description (`mlflow.note.content`, shown on its Overview): the question, the best
  trial, the target, the search space and the comparison table, each run a link to its child run;
  with `--repeats`, the mean ± std and the 95% interval over seeds, and the study's findings judged
  on them (orchestrator.verdicts).
- A child run's description: what it tried and how it did.
- A saved view of the study's trials for the experiment's runs page (the "Views" menu; experiment tag
  `mlflow.sharedViewState.<parent run id>`): only this invocation's children, ranked, with the
  searched params and the results as columns, so the chart view shows the best runs.

Links are relative to the UI's own address (`#/experiments/...`), so they work however the UI is
reached, and carry `workflowType=machine_learning`: MLflow 3.17's UI takes the GenAI / Model training
choice from the URL or from the browser (default GenAI), not from the experiment's
`mlflow.experimentKind` tag, and on the GenAI side an experiment opens on its traces (ui_app.py makes
Model training the browser's default for `mlflow ui --app-name dla`).
"""
from __future__ import annotations

import json
import math
import statistics
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..ranking import best_key, best_of_groups, expand_metrics, rank, test_rule
from ..verdicts import judge, mean_interval
from .naming import describe, format_value

ML = "workflowType=machine_learning"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow 3.17 UI: saved views of an experiment's runs page
RANK_METRIC = "study_rank"                    # 1 = the study's best trial (orchestrator.ranking)
REPEATS_MARK = "\n\n---\n\n<!-- repeats -->\n"  # where a --repeats invocation's section starts in the search's note
TOP = 10                                       # rows of a table without groups
PAD = "&nbsp;&nbsp;"  # after every table cell: the UI draws Markdown tables without cell padding


@dataclass(frozen=True)
class StudyText:
    """What the tracker knows of the study it logs, as plain values (pickles with the tracker)."""

    question: str = ""
    space: Mapping[str, str] = field(default_factory=dict)  # param -> its distribution, in sampling order
    pinned: tuple[str, ...] = ()                             # params set on the command line (--set)
    metric: str = "val_acc"
    mode: str = "max"
    report_by: tuple[str, ...] = ()
    report_metrics: tuple[str, ...] = ()
    findings: tuple[Any, ...] = ()                           # orchestrator.verdicts.Finding records
    test_once: bool = False                                  # Study.test_once: only selected trials are tested


def run_link(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}?{ML}"


def view_link(experiment_id: str, key: str) -> str:
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={key}&{ML}"


def compare_link(experiment_id: str, run_ids: Sequence[str]) -> str:
    runs = urllib.parse.quote(json.dumps(list(run_ids), separators=(",", ":")))
    experiments = urllib.parse.quote(json.dumps([experiment_id]))
    return f"#/compare-runs?runs={runs}&experiments={experiments}&{ML}"


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def other_metrics(study: StudyText, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The table's metrics besides the target: the study's report metrics, else every `test_*` one."""
    if study.report_metrics:
        return [m for m in expand_metrics(study.report_metrics, rows) if m != study.metric]
    return sorted({k for r in rows for k in r["metrics"] if k.startswith("test_")})


def comparison(study: StudyText, rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The study's comparison: one row per combination of `report_by` (its best trial), or the TOP
    best trials; each row names its run. Columns, then rows as dicts keyed by column (plus `run_id`)."""
    best, others = best_key(study.metric), other_metrics(study, rows)
    results = [f"best {study.metric}", "epoch", *others]

    def cells(r: Mapping[str, Any]) -> dict[str, Any]:
        m = r["metrics"]
        return {"run": r["name"], "run_id": r["run_id"], f"best {study.metric}": m.get(best, m.get(study.metric)),
                "epoch": _int(m.get(f"{best}_epoch")), **{k: m.get(k) for k in others}}

    if study.report_by:
        groups = best_of_groups(rows, lambda r: tuple(r["params"].get(k, "-") for k in study.report_by),
                                study.metric, study.mode)
        table = [{**dict(zip(study.report_by, key)), "trials": n, **cells(r)} for key, r, n in groups]
        return [*study.report_by, "trials", "run", *results], table
    ranked = rank(rows, study.metric, study.mode)[:TOP]
    names = list(dict.fromkeys(k for r in ranked for k in r["params"]))
    table = [{"rank": i + 1, **{k: r["params"].get(k, "-") for k in names}, **cells(r)} for i, r in enumerate(ranked)]
    return ["rank", *names, "run", *results], table


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def markdown_table(headers: Sequence[str], table: Sequence[Mapping[str, Any]], experiment_id: str) -> list[str]:
    """The comparison as a Markdown table: params (left of `run`) with 3 digits, results with 4 decimals."""
    split = headers.index("run")

    def cell(i: int, h: str, row: Mapping[str, Any]) -> str:
        v = row.get(h)
        if h == "run":
            return f"[{_md(v)}]({run_link(experiment_id, row['run_id'])})"
        return _md(format_value(v, 3) if i < split and v is not None else fmt(v))

    align = ["---" if i <= split else "--:" for i in range(len(headers))]
    return [_row(_md(h) for h in headers), "|" + "|".join(align) + "|",
            *(_row(cell(i, h, r) for i, h in enumerate(headers)) for r in table)]


def _row(cells: Any) -> str:
    return "| " + " | ".join(f"{c}{PAD}" for c in cells) + " |"


def table_columns(headers: Sequence[str], table: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The comparison as columns, for `MlflowClient.log_table` (run names and full run ids included)."""
    cols = [*headers[:headers.index("run") + 1], "run_id", *headers[headers.index("run") + 1:]]
    return {h: [_plain(r.get(h)) for r in table] for h in cols}


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, (int, float, str)) else str(v)


def describe_space(study: StudyText) -> str:
    parts = [f"`{k}` {'pinned by --set' if k in study.pinned else v}" for k, v in study.space.items()]
    return " · ".join(parts)


def target(study: StudyText) -> str:
    return (f"{study.mode} `{study.metric}` at each trial's best epoch (`{best_key(study.metric)}`; ties go to the "
            f"lower trial id); {test_rule(study.test_once)}.")



def parent_note(study: StudyText, experiment_id: str, view_key: str, rows: Sequence[Mapping[str, Any]] | None,
                statuses: Mapping[str, int] | None = None) -> str:
    """The parent run's description; `rows` None while the study runs."""
    lines: list[str] = []
    if study.question:
        lines += [f"**{_md(study.question)}**", ""]
    ranked = rank(rows or [], study.metric, study.mode)
    if ranked:
        top = ranked[0]
        m, best = top["metrics"], best_key(study.metric)
        tests = ", ".join(f"{k} {fmt(m[k])}" for k in other_metrics(study, rows) if k in m)
        epoch = _int(m.get(f"{best}_epoch"))
        lines += [f"Best of {len(ranked)} trials: [{_md(top['name'])}]({run_link(experiment_id, top['run_id'])}), "
                  f"best `{study.metric}` {fmt(m.get(best, m.get(study.metric)))}"
                  f"{f' at epoch {epoch}' if epoch else ''}{f'; {tests}' if tests else ''}.", ""]
        links = [f"[all trials, ranked]({view_link(experiment_id, view_key)})"]
        if len(ranked) > 1:
            links.append(f"[compare the two best]({compare_link(experiment_id, [r['run_id'] for r in ranked[:2]])})")
        lines += [" · ".join(links), ""]
    elif rows is None:
        lines += [f"Running: [its trials so far]({view_link(experiment_id, view_key)}).", ""]
    lines += [f"**Target.** {target(study)}", ""]
    if study.space:
        lines += [f"**Search space.** {describe_space(study)}", ""]
    if rows is not None:
        counts = ", ".join(f"{n} {s}" for s, n in sorted((statuses or {}).items()) if n)
        lines += [f"**Trials.** {len(rows)} reported{f' ({counts})' if counts else ''}.", ""]
        headers, table = comparison(study, rows)
        if table:
            lines += markdown_table(headers, table, experiment_id) + [""]
    return "\n".join(lines).strip() + "\n"


def repeats_groups(study: StudyText, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Finished repeat trials grouped by config (every sampled param but `seed`): mean ± std of the
    target's best and of the other table metrics, and the 95% interval of the target's mean."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rank(rows, study.metric, study.mode):
        groups.setdefault(tuple((k, v) for k, v in r["params"].items() if k != "seed"), []).append(r)
    metrics = [best_key(study.metric), *other_metrics(study, rows)]
    out = []
    for config, members in groups.items():
        row: dict[str, Any] = {"config": describe(dict(config)) or "(fixed)",
                               "seeds": len(members)}
        for m in metrics:
            values = [float(r["metrics"][m]) for r in members if m in r["metrics"]]
            row[m] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
        row["interval"] = mean_interval([float(r["metrics"][metrics[0]]) for r in members if metrics[0] in r["metrics"]])
        out.append(row)
    return out


def verdict_lines(study: StudyText, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The study's findings judged on the repeat trials: `claim: effect [interval] (n seeds): holds`."""
    finished = [r for r in rows if r.get("status", "FINISHED") == "FINISHED"]
    return [f"{f.claim}: {judge(f, finished).line()}" for f in study.findings]


def repeats_section(study: StudyText, experiment_id: str, repeats_parent: str, rows: Sequence[Mapping[str, Any]]) -> str:
    groups = repeats_groups(study, rows)
    if not groups:
        return ""
    metrics = [best_key(study.metric), *other_metrics(study, rows)]
    heads = ["config", "seeds", *(f"{m} (mean ± std)" for m in metrics), f"{metrics[0]} 95% interval"]
    lines = [f"**Repeated with several seeds** ([the repeat runs]({run_link(experiment_id, repeats_parent)})):", "",
             _row(heads), "|---|--:|" + "--:|" * (len(metrics) + 1)]
    for g in groups:
        cells = [f"{g[m][0]:.4f} ± {g[m][1]:.4f}" if g[m] else "-" for m in metrics]
        interval = f"[{g['interval'][0]:.4f}, {g['interval'][1]:.4f}]" if g["interval"] else "-"
        lines.append(_row([_md(g["config"]), str(g["seeds"]), *cells, interval]))
    found = verdict_lines(study, rows)
    if found:
        lines += ["", "**Findings.**", "", *(f"{i}. {_md(line)}" for i, line in enumerate(found, 1))]
    return "\n".join(lines) + "\n"


def with_repeats(note: str, section: str) -> str:
    """The search parent's note with its repeats section replaced by `section`."""
    return note.split(REPEATS_MARK)[0].rstrip() + "\n" + (REPEATS_MARK + section if section else "")


def child_note(name: str, trial_id: str, status: str, parent_name: str, experiment_id: str, parent_id: str,
               study: StudyText, metrics: Mapping[str, float]) -> str:
    best = best_key(study.metric)
    lines = [f"Trial `{trial_id}` of [{_md(parent_name or 'its study')}]({run_link(experiment_id, parent_id)}): "
             f"{_md(name)} — **{status.replace('_', ' ')}**."]
    if best in metrics:
        epoch = _int(metrics.get(f"{best}_epoch"))
        final = metrics.get(f"final_{study.metric}")
        tests = ", ".join(f"{k} {fmt(metrics[k])}" for k in sorted(metrics) if k.startswith("test_"))
        lines.append(f"Best `{study.metric}` {fmt(metrics[best])}{f' at epoch {epoch}' if epoch else ''}"
                     f"{f' (final {fmt(final)})' if final is not None else ''}{f'; {tests}' if tests else ''}.")
    return "\n\n".join(lines) + "\n"


def view_state(parent_id: str, study: StudyText, params: Sequence[str], metrics: Sequence[str]) -> dict[str, Any]:
    """The runs-page state of the saved view (MLflow 3.17: search facets + UI state, see the module doc)."""
    columns = [*(f"params.`{p}`" for p in params), *(f"metrics.`{m}`" for m in metrics), "tags.`status`"]
    return {"searchFilter": f"tags.`mlflow.parentRunId` = '{parent_id}'", "orderByKey": f"metrics.`{RANK_METRIC}`",
            "orderByAsc": True, "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs",
            "datasetsFilter": [], "selectedColumns": columns, "runsHiddenMode": "FIRST_10_RUNS"}


def view_tag(name: str, state: Mapping[str, Any], created_ms: int, updated_ms: int) -> str:
    """The saved view's experiment tag value: the envelope the UI's "Views" menu reads."""
    return json.dumps({"name": name, "createdAt": created_ms, "updatedAt": updated_ms,
                       "state": json.dumps(state, separators=(",", ":"))}, separators=(",", ":"))
