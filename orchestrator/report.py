"""Study reports: the comparison each lab asks for, read back from MLflow, written as Markdown and
as a self-contained HTML page (figures embedded), and logged to the study's parent run.

    python orchestrator/run.py report lab1 [--study residual-mlp] [--parent-run ID] [--out DIR]
"""
from __future__ import annotations

import base64
import html
import math
import shutil
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .ranking import best_of_groups, expand_metrics, rank, test_rule, trial_score
from . import lab_tables
from .studies import LabTable, Study, get_study, tables_of
from .tracking import download_figures, log_report, read_invocation, read_invocations, read_repeats
from .verdicts import judge, mean_interval


@dataclass
class Section:
    title: str
    blocks: list[tuple] = field(default_factory=list)  # ("p", text) | ("table", headers, rows) | ("img", path, caption)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _key(run: dict, names: Sequence[str]) -> tuple:
    return tuple(run["sampled"].get(n, run["params"].get(n, "-")) for n in names)


def _scored(study: Study, runs: list[dict]) -> list[dict]:
    """Finished runs that have the study's metric, best first (orchestrator.ranking: each trial's best
    epoch, ties to the lowest trial id), as the tracker ranked them for the parent's tags and note."""
    return rank([r for r in runs if r["status"] == "FINISHED"], study.metric, study.mode)


def _metrics(study: Study, runs: list[dict]) -> list[str]:
    """The report metrics, each `prefix/*` expanded to the runs' metrics of that prefix."""
    return expand_metrics(study.report_metrics, runs)


def _headers(study: Study, metrics: Sequence[str]) -> list[str]:
    """The report metrics; the target is shown as its best epoch's value (`best <metric>`)."""
    return [f"best {m}" if m == study.metric else m for m in metrics]


def _values(study: Study, run: dict, metrics: Sequence[str]) -> list[str]:
    def value(m: str) -> Any:
        v = trial_score(run, m) if m == study.metric else run["metrics"].get(m)
        return float("nan") if v is None else v

    return [_fmt(value(m)) for m in metrics]


def _name(run: dict) -> str:
    """The run as the MLflow UI names it (the tracker names child runs by what they tried)."""
    return str(run.get("name") or run["run_id"]).replace("|", "\\|")


def comparison_table(study: Study, runs: list[dict], profile: str = "quick") -> tuple[list[str], list[list[str]]]:
    """One row per combination of `study.report_by` (its best finished trial), or the ten best trials.
    On the full profile, the lab's number for the cell stands in a last column where the catalog has one."""
    metrics = _metrics(study, runs)
    if study.report_by:
        groups = best_of_groups([r for r in runs if r["status"] == "FINISHED"], lambda r: _key(r, study.report_by),
                                study.metric, study.mode)
        headers = [*study.report_by, "trials", "best run", *_headers(study, metrics)]
        rows = [[*map(_fmt, k), str(n), _name(r), *_values(study, r, metrics)] for k, r, n in groups]
        if profile == "full" and study.cell_references:
            headers.append("lab's reference")
            for row, (_, r, _) in zip(rows, groups):
                row.append(study.reference_for(r["sampled"]) or "-")
        return headers, rows
    scored = _scored(study, runs)
    names = sorted({n for r in scored for n in r["sampled"]})
    headers = [*names, "run", *_headers(study, metrics)]
    rows = [[*(_fmt(r["sampled"].get(n, "-")) for n in names), _name(r), *_values(study, r, metrics)]
            for r in scored[:10]]
    return headers, rows


def best_configs(study: Study, runs: list[dict], k: int = 3) -> tuple[list[str], list[list[str]]]:
    """The k best trials: rank, run name, sampled config, metrics, full run id (as the UI shows them)."""
    metrics = _metrics(study, runs)
    rows = [[str(i + 1), _name(r), ", ".join(f"{n}={_fmt(v)}" for n, v in sorted(r["sampled"].items())),
             *_values(study, r, metrics), f"`{r['run_id']}`"]
            for i, r in enumerate(_scored(study, runs)[:k])]
    return ["rank", "run", "config", *_headers(study, metrics), "run id"], rows


def _typed_order(run: dict, first: Sequence[str]) -> tuple:
    """A config's place in a table: the compared factors first, then the rest, by value (numbers as
    numbers: depth 2 before 16)."""
    names = [*first, *sorted(k for k in run["sampled"] if k not in first and k != "seed")]
    values = [run["sampled"].get(k) for k in names]
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values)


def repeats_table(study: Study, runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    """mean ± std over seeds of each re-run configuration, and the 95% interval of the target's mean."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    metrics = _metrics(study, runs)
    for r in runs:
        if r["status"] == "FINISHED":
            groups[tuple(sorted((k, _fmt(v)) for k, v in r["sampled"].items() if k != "seed"))].append(r)
    rows = []
    for key, members in sorted(groups.items(), key=lambda kv: _typed_order(kv[1][0], study.report_by)):
        interval = mean_interval([v for v in (trial_score(r, study.metric) for r in members) if v is not None])
        cells = [f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "-"]
        for m in metrics:
            scores = [trial_score(r, m) if m == study.metric else r["metrics"].get(m) for r in members]
            values = [v for v in scores if v is not None]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {sd:.4f}" if values else "-")
        rows.append([", ".join(f"{k}={v}" for k, v in key) or "(fixed)", str(len(members)), *cells])
    return (["config", "seeds", f"best {study.metric} 95% interval",
             *(f"{m} (mean ± std)" for m in _headers(study, metrics))], rows)


def verdict_lines(study: Study, runs: list[dict], repeats: list[dict] | None) -> list[str]:
    """Each finding of the study judged on the --repeats runs (one per seed of each cell's selected
    configuration); without repeats, on each cell's best search trial, which gives a point estimate
    but no interval (inconclusive, and the line says to run --repeats)."""
    if repeats is None:
        runs = [r for _, r, _ in best_of_groups([r for r in runs if r["status"] == "FINISHED"],
                                                lambda r: _key(r, study.report_by), study.metric, study.mode)]
    return [f"{f.claim}: {judge(f, repeats if repeats is not None else runs).line()}" for f in study.findings]


def study_section(uri: str, study: Study, out: Path, parent_id: str | None = None) -> tuple[Section, str | None]:
    section = Section(f"{study.key}: {study.question}")
    inv = read_invocation(uri, study.lab, study.name, parent_id)
    if inv is None:
        section.blocks.append(("p", "Not run yet."))
        return section, None
    parent, runs = inv["parent"], inv["children"]
    profile = parent["tags"].get("profile", "?")
    statuses = defaultdict(int)
    for r in runs:
        statuses[r["status"] if r["tags"].get("stopped_early") != "true" else "stopped early"] += 1
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(parent["start_time"] / 1000))
    section.blocks.append(("p", f"Parent run {_name(parent)} `{parent['run_id']}` ({profile} profile, started {started}, "
                                f"git {parent['tags'].get('git_commit', '?')[:10]}): {len(runs)} trials — "
                                + ", ".join(f"{n} {s.lower()}" for s, n in sorted(statuses.items())) +
                                f". Target: {study.mode} `{study.metric}` at each trial's best epoch (selection on validation; "
                                f"ties go to the lower trial id; {test_rule(study.test_once)})."))
    section.blocks.append(("table", *comparison_table(study, runs, profile)))
    section.blocks.append(("p", "Best configurations:"))
    section.blocks.append(("table", *best_configs(study, runs)))
    repeats = read_repeats(uri, study.lab, parent["run_id"])
    if repeats is not None:
        section.blocks.append(("p", f"Re-run with several seeds (parent run {_name(repeats['parent'])} "
                                    f"`{repeats['parent']['run_id']}`):"))
        section.blocks.append(("table", *repeats_table(study, repeats["children"])))
    if study.findings:
        lines = verdict_lines(study, runs, repeats["children"] if repeats is not None else None)
        section.blocks.append(("p", "Findings: " + " ".join(f"({i}) {line}." for i, line in enumerate(lines, 1))))
    if study.references:
        note = "" if profile == "full" else " (they apply to the full profile; this run used the quick one)"
        section.blocks.append(("p", f"Reference numbers from the lab{note}: {study.references}"))
    figures = download_figures(uri, parent["run_id"], out / "figures" / study.name)
    scored = _scored(study, runs)
    if scored:
        figures += download_figures(uri, scored[0]["run_id"], out / "figures" / study.name / "best")
    for path in figures:
        section.blocks.append(("img", path, f"{path.parent.name if path.parent.name == 'best' else 'study'}: {path.stem}"))
    return section, parent["run_id"]


def table_section(uri: str, lab: str, table: LabTable) -> Section:
    """A table across the lab's studies (orchestrator.lab_tables), from their newest invocations."""
    studies = [get_study(lab, name) for name in table.studies]
    if table.kind == "winners":
        built = lab_tables.winners(table, [(s, read_invocation(uri, lab, s.name)) for s in studies])
    else:
        built = lab_tables.scores(table, studies[0], read_invocations(uri, lab, studies[0].name))
    section = Section(table.title)
    section.blocks.append(("table", *built) if built[1] else ("p", "Not run yet."))
    return section


def _markdown(title: str, sections: list[Section], out: Path) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for block in s.blocks:
            if block[0] == "p":
                lines += [block[1], ""]
            elif block[0] == "table":
                headers, rows = block[1], block[2]
                lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
            else:
                lines += [f"![{block[2]}]({block[1].relative_to(out).as_posix()})", ""]
    return "\n".join(lines)


def _html(title: str, sections: list[Section]) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:48%;margin:4px}"
             "</style>", f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        for block in s.blocks:
            if block[0] == "p":
                parts.append(f"<p>{html.escape(block[1])}</p>")
            elif block[0] == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in block[2])
                parts.append(f"<table><tr>{head}</tr>{body}</table>")
            else:
                data = base64.b64encode(block[1].read_bytes()).decode()
                parts.append(f"<img alt='{html.escape(block[2])}' title='{html.escape(block[2])}' "
                             f"src='data:image/png;base64,{data}'>")
    return "\n".join(parts)


def build_report(uri: str, lab: str, studies: Sequence[Study], out: Path,
                 parent_id: str | None = None) -> Path:
    """Writes out/report.md, out/report.html and out/figures/; logs them to each study's parent run.
    Returns the HTML path."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sections, parents = [], []
    for study in studies:
        section, pid = study_section(uri, study, out, parent_id)
        sections.append(section)
        if pid:
            parents.append(pid)
    chosen = {s.name for s in studies}
    sections += [table_section(uri, lab, t) for t in tables_of(lab) if set(t.studies) & chosen]
    title = f"{lab} report ({time.strftime('%Y-%m-%d %H:%M')})"
    (out / "report.md").write_text(_markdown(title, sections, out))
    (out / "report.html").write_text(_html(title, sections))
    for pid in parents:
        log_report(uri, pid, out)
    return out / "report.html"
