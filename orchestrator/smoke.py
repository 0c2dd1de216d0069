"""`run.py LAB --smoke`: the check to run before paying for GPU-hours.

    python orchestrator/run.py lab1 --profile full --smoke --data-dir /data    # then without --smoke

Every chosen study of the chosen profile runs on that profile's real data and models, shrunk: two
trials of one epoch, at most 256 training images, 128 validation and 128 test images, 64 evaluated
or attacked images, a few attack steps (`SHRINK`), on whatever hardware the cluster has. Then one
line per study says whether its data, model, training loop, MLflow logging and report worked, or
what failed first. Exit code 0 when every study worked, EXIT_FAILED otherwise.

It is a transformation of the plan (`shrink`: the values are pins, so a space that searches
`epochs` gets 1 too; a `--set` value wins over them) and a reading of what the run left in MLflow
and in the report (`summary`); the session runs it as any other invocation. Unless a tracking store
(--mlflow-uri or MLFLOW_TRACKING_URI), --storage or --report-dir is named, everything it writes goes
under ./smoke/: a smoke run is never taken later for a result, a source model or a report's latest run.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from trainables.config import field_names, from_dict

from .options import EXIT_FAILED, EXIT_OK, Planned, RunOptions, report_dir
from .study import Study

TRIALS = 2  # trials per study: the search's first suggestions, and a second trial process start


def _cap(limit: int) -> Callable[[int], int]:
    """At most `limit`; 0 (these settings' "all") becomes `limit`."""
    return lambda value: limit if value == 0 else min(value, limit)


# Each setting a study's config has, shrunk. Fields of the labs' configs (trainables/...).
SHRINK: dict[str, Callable[[Any], Any]] = {
    "epochs": lambda value: 1,
    "source_epochs": lambda value: 1,  # the source CNN a transfer/CAM trial trains when MLflow has none
    "max_train": _cap(256),            # training images (texts for Lab 3's sentiment studies)
    "max_val_test": _cap(128),         # validation images and test images, each (the image recipes)
    "max_eval": _cap(64),              # Lab 4: attacked test images; CAM: faithfulness images; CLIP: val/test
    "shots": _cap(4),                  # CLIP LoRA: training images per class
    "attack_steps": _cap(5),           # iterative FGSM steps (Lab 4)
    "pgd_steps": _cap(2),              # PGD steps of Lab 4's robustness evaluation
    "co_batch": _cap(64),              # Lab 4 adv-train: images of the per-epoch PGD probe
}
FOLDER = "smoke"  # under the launch folder: the default home of a smoke run's store, results and report


def shrink(planned: Sequence[Planned]) -> list[Planned]:
    """Each planned study with SHRINK applied to the settings its config has, as pins; pins it had
    (`--set`, the profile's) stay as they were."""
    out = []
    for p in planned:
        cls = p.study.config_cls
        current = from_dict(cls, p.base)
        small = {k: rule(getattr(current, k)) for k, rule in SHRINK.items()
                 if k in field_names(cls) and k not in p.pins}
        base = {**p.base, **small}
        from_dict(cls, base)  # still a valid config
        out.append(Planned(p.study, base, {**small, **p.pins}, p.run_keys))
    return out


def options(opts: RunOptions, planned: Sequence[Planned], *, named_store: bool, named_storage: bool,
            named_report: bool) -> RunOptions:
    """The run's options for a smoke run: TRIALS trials per study unless --num-samples says otherwise,
    and ./smoke/ for what was not named (a `source_run` lives in the run's own store: kept); the
    report folder is always a known path (summary reads it)."""
    home, lab = opts.launch / FOLDER, planned[0].study.lab
    named_store = named_store or any(p.base.get("source_run") for p in planned)
    report = opts.report_dir if named_report else home / "reports" / f"{lab}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(
        opts, num_samples=opts.num_samples or TRIALS,
        mlflow_uri=opts.mlflow_uri if named_store else f"sqlite:///{home / 'mlflow.db'}",
        storage=opts.storage if named_storage else str(home / "ray_results"), report_dir=report_dir(report, lab))


def run(planned: Sequence[Planned], opts: RunOptions, *, callbacks: Sequence[Any] = ()) -> int:
    """Runs the shrunk plan through the session, then prints one line per study."""
    from .session import run_planned

    lab = planned[0].study.lab
    if opts.mlflow_uri.startswith("sqlite:///"):
        Path(opts.mlflow_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    print(f"smoke: {len(planned)} {lab} {'study' if len(planned) == 1 else 'studies'} of the {opts.profile} profile, "
          f"{opts.num_samples} trials of 1 epoch each, at most 256 training images; MLflow {opts.mlflow_uri}", flush=True)
    started = time.time()
    code = run_planned(list(planned), opts, callbacks=callbacks)  # bad input still raises UsageError: exit 2
    lines, ok = summary(planned, opts, started)
    print("\n".join(lines), flush=True)
    return code if code not in (EXIT_OK, EXIT_FAILED) else (EXIT_OK if ok else EXIT_FAILED)


# ---------------------------------------------------------------------------------------- summary
def summary(planned: Sequence[Planned], opts: RunOptions, started: float) -> tuple[list[str], bool]:
    """(lines to print, whether every study worked), from what the run left in MLflow and the report."""
    from .tracking import read_invocation

    lab = planned[0].study.lab
    report = opts.report_dir / "report.md" if opts.report_dir else None
    text = report.read_text() if report is not None and report.is_file() else ""
    lines = [f"smoke summary ({opts.profile} profile, {_hardware()}):"]
    width = max(len(p.study.key) for p in planned)
    failed = 0
    for p in planned:
        inv = read_invocation(opts.mlflow_uri, lab, p.study.name)
        if inv is not None and inv["parent"]["start_time"] < started * 1000 - 1000:
            inv = None  # an older invocation in a named store: this run did not get to the study
        ok, line = verdict(p.study, inv, section(text, p.study))
        failed += not ok
        lines.append(f"  {'ok    ' if ok else 'FAILED'}  {p.study.key:<{width}}  {line}")
    took = f"{time.time() - started:.0f} s"
    where = report.parent if text and report is not None else "not written"
    lines.append(f"smoke: every study worked in {took}; next: the same command without --smoke (report: {where})"
                 if not failed else f"smoke: {failed} of {len(planned)} studies failed ({took}; report: {where})")
    return lines, not failed


def section(report: str, study: Study) -> str:
    """The study's section of report.md ('' if it has none)."""
    head = f"## {study.key}:"
    start = report.find(head)
    if start < 0:
        return ""
    end = report.find("\n## ", start + len(head))
    return report[start:] if end < 0 else report[start:end]


def verdict(study: Study, inv: Mapping[str, Any] | None, report_section: str) -> tuple[bool, str]:
    """Whether a study's data, model, loop, logging and report worked, in one line: (ok, line).
    `inv` is the study's invocation as tracking.read_invocation returns it (None: no run of it)."""
    if inv is None:
        return False, "not run (no MLflow run of it from this smoke run; see the lines above)"
    children = inv["children"]
    failed = [c for c in children if c["status"] == "FAILED"]
    finished = [c for c in children if c["status"] == "FINISHED"]
    if not children:
        return False, "no trial started (see the lines above)"
    if failed:
        first = min(failed, key=lambda c: c["start_time"])
        stage = ("after its first epochs (training loop or final evaluation)" if _reported(first)
                 else "before its first report (data, model or first epoch)")
        return False, f"{len(failed)}/{len(children)} trials failed, the first {stage}: {_error(first)}"
    if not finished:
        return False, f"no trial finished ({', '.join(sorted({c['status'] for c in children}))})"
    logged = [c for c in finished if any(k in c["metrics"] for k in (study.metric, f"best_{study.metric}"))]
    if len(logged) < len(finished):
        return False, f"{len(finished) - len(logged)} finished trials have no {study.metric} in MLflow (logging)"
    if study.test_once and not any(c["tags"].get("tested") == "true" for c in finished):
        return False, "trials ok, but no selected trial was tested (the test phase: see the lines above)"
    if not report_section:
        return False, "trials ok, but the report has no section for it (report)"
    if "Not run yet." in report_section:
        return False, "trials ok, but the report did not find its runs (report)"
    best = max(_best(c, study.metric) for c in finished) if study.mode == "max" else \
        min(_best(c, study.metric) for c in finished)
    return True, f"data, model, loop, logging, report: {len(finished)} trials, best {study.metric} {best:.3g}"


def _best(child: Mapping[str, Any], metric: str) -> float:
    metrics = child["metrics"]
    return float(metrics.get(f"best_{metric}", metrics.get(metric, float("nan"))))


def _reported(child: Mapping[str, Any]) -> bool:
    """The trial reported at least one epoch (its metrics reached MLflow)."""
    return bool(child["metrics"])


def _error(child: Mapping[str, Any]) -> str:
    """The last line of the trial's traceback (Tune's error file; the session's line above names where
    the whole traceback is kept)."""
    path = child["tags"].get("error_file", "")
    try:
        lines = [x for x in Path(path).read_text().splitlines() if x.strip()] if path and "://" not in path else []
    except OSError:
        lines = []
    text = lines[-1].strip() if lines else "(no error file)"
    return text if len(text) <= 240 else text[:237] + "..."


def _hardware() -> str:
    """What the trials ran on: the cluster's CPUs and GPUs (Ray is still connected after the run)."""
    try:
        import ray

        res = ray.cluster_resources() if ray.is_initialized() else {}
    except Exception:
        res = {}
    if not res:
        return "hardware unknown"
    gpus = res.get("GPU", 0)
    return f"{res.get('CPU', 0):g} CPUs, " + (f"{gpus:g} GPUs" if gpus else "no GPU")
