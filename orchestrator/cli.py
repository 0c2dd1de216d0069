"""Command line: `python orchestrator/run.py {list | prefetch LAB | LAB} ...` (see --help).

Everything a user can get wrong is checked before Ray starts or MLflow is touched, so bad input
gives one line, exit code 2, and leaves no run and no results folder behind. The only reader of
argparse: a run gets the planned studies and one frozen `RunOptions` (orchestrator.options).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from trainables.config import ConfigError, from_dict, to_dict
from trainables.data import DataMissing, download_dataset, has_dataset

from . import studies as registry
from .options import Planned, RunOptions, UsageError, report_dir, tracking_uri
from .studies import PROFILES

RUN_KEYS = {"train_backend": ("auto", "ray-train")}  # --set keys for the wiring, not the trainable


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + line
        raise UsageError(message)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> Parser:
    labs = ", ".join(registry.labs())
    parser = Parser(prog="run.py", description=(
        "Run the Deep Learning Applications labs as Ray Tune + Optuna studies logged to MLflow.\n\n"
        f"  run.py list                       labs ({labs}), studies, search spaces, metrics\n"
        "  run.py prefetch LAB --data-dir D  download what LAB's full profile needs, once\n"
        "  run.py LAB [--study NAME] ...     run a lab's studies (all of them without --study), then report\n"
        "  run.py report LAB [--study NAME]  the lab's comparison tables and figures, from MLflow\n\n"
        "Run `run.py LAB --help` for the study options."), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{list,prefetch,LAB}", parser_class=Parser)
    sub.add_parser("list", help="print every lab, its studies, search spaces and target metrics")
    pre = sub.add_parser("prefetch", help="download the datasets a lab's full profile needs into --data-dir")
    pre.add_argument("lab")
    pre.add_argument("--data-dir", required=True, type=Path)
    rep = sub.add_parser("report", help="write a lab's report (Markdown + HTML) from its runs in MLflow")
    rep.add_argument("lab")
    rep.add_argument("--study", action="append", help="study to report (repeatable); default: all of the lab's")
    rep.add_argument("--parent-run", help="report this invocation (a parent run id) instead of the latest")
    rep.add_argument("--out", type=Path, help="output folder (default ./reports/LAB-TIMESTAMP)")
    rep.add_argument("--mlflow-uri", help="tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    for lab in registry.labs():
        add_study_options(sub.add_parser(lab, help=f"run {lab}'s studies", formatter_class=argparse.RawDescriptionHelpFormatter,
                                         description=_lab_help(lab)))
    return parser


def _lab_help(lab: str) -> str:
    lines = [f"Studies of {lab} (run in this order without --study):"]
    lines += [f"  {s.name:<16} {s.question}" for s in registry.studies_of(lab)]
    return "\n".join(lines)


def add_study_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", action="append", help="study to run (repeatable); default: all, in order")
    p.add_argument("--profile", choices=PROFILES, default="quick",
                   help="quick: offline, bundled data, minutes on a CPU; full: the lab's real data and scale")
    p.add_argument("--num-samples", type=_positive_int, help="trials per study (default: the study's, per profile)")
    p.add_argument("--max-concurrent", type=_positive_int, default=4, help="trials running at once (default 4)")
    p.add_argument("--cpus-per-trial", type=_positive_float, default=1.0, help="CPUs per trial, or per worker (default 1)")
    p.add_argument("--gpus-per-trial", type=_non_negative_float, default=None,
                   help="GPUs per trial or per worker, fractions pack trials on one GPU (default: the study's "
                        "packing if the cluster has or can launch GPUs, 1 per DDP worker, else 0)")  # [cluster #13]
    p.add_argument("--workers-per-trial", type=_positive_int, default=1,
                   help="Ray Train workers per trial; > 1 runs DDP under TorchTrainer")
    p.add_argument("--set", dest="sets", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config field; setting a searched field pins it "
                        "(train_backend=ray-train forces TorchTrainer)")
    p.add_argument("--mlflow-uri", help="tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--storage", help="Tune/Train storage: a folder or a URI shared by all nodes (default ./ray_results)")
    p.add_argument("--data-dir", type=Path, help="dataset folder for the full profile (default ./data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search and of every trial (default 0)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, a cluster on this machine, "
                                         "or local); `local` forces a private Ray")  # [cluster #13]
    p.add_argument("--wait-for-nodes", type=_positive_float, default=900.0, metavar="SECONDS",  # [cluster #13]
                   help="how long a trial may wait for the autoscaler's nodes before the study ends (default 900)")
    p.add_argument("--offline", action="store_true", default=os.environ.get("DLA_OFFLINE") == "1",
                   help="never download; missing data is an error")
    p.add_argument("--max-failures", type=int, default=1, help="retries of a failed trial from its checkpoint")
    p.add_argument("--repeats", type=int, default=0, metavar="K",
                   help="after the search, re-run the best configuration (of each compared group) with K seeds; "
                        "the report shows mean ± std")
    p.add_argument("--report-dir", type=Path, help="where the report goes (default ./reports/LAB-TIMESTAMP)")
    p.add_argument("--resume", action="store_true",
                   help="resume the newest interrupted invocation of each chosen study under --storage "
                        "(its saved settings are used; finished trials are not rerun)")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table")


# ---------------------------------------------------------------------------------------- plan
def parse_sets(groups: Sequence[Sequence[str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (i for g in groups for i in g):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def plan(lab: str, names: Sequence[str] | None, profile: str, sets: dict[str, str], seed: int) -> list[Planned]:
    try:
        chosen = [registry.get_study(lab, n) for n in names] if names else registry.studies_of(lab)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    run_keys = {k: v for k, v in sets.items() if k in RUN_KEYS}
    for key, value in run_keys.items():
        if value not in RUN_KEYS[key]:
            raise UsageError(f"--set {key}: expected one of {list(RUN_KEYS[key])}, got {value!r}")
    config_sets = {k: v for k, v in sets.items() if k not in RUN_KEYS}
    planned = []
    for study in chosen:
        try:
            pins = to_dict(from_dict(study.config_cls, config_sets))  # typed and validated
            pins = {k: pins[k] for k in config_sets}
            values = {"seed": seed, **study.base_config(profile), **pins}
            from_dict(study.config_cls, values)  # the combination must be valid too
        except ConfigError as e:
            raise UsageError(f"--set {e}") from None
        planned.append(Planned(study, values, pins, run_keys))
    return planned


def check_storage(storage: str) -> None:
    """The storage folder (or its nearest existing parent) must be a writable folder; URIs are the
    cluster's business. Nothing is created here."""
    if "://" in storage:
        return
    probe = Path(storage)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--storage {storage}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UsageError(f"--storage {storage}: not writable ({e.strerror})") from None


def check_data(planned: list[Planned], profile: str, data_dir: Path, offline: bool) -> None:
    """The full profile needs its datasets in data_dir: downloaded here, once, in the driver (never
    racing in every worker), unless --offline."""
    for name in sorted({d for p in planned for d in p.study.profiles[profile].datasets}):
        if has_dataset(name, data_dir):
            continue
        if offline:
            raise UsageError(f"dataset {name} not found in {data_dir} (offline); run `run.py prefetch` where there is network")
        print(f"downloading {name} into {data_dir} ...", flush=True)
        try:
            download_dataset(name, data_dir)
        except DataMissing as e:
            raise UsageError(str(e).splitlines()[0]) from None


# ---------------------------------------------------------------------------------------- commands
def cmd_list() -> None:
    for lab in registry.labs():
        print(lab)
        for s in registry.studies_of(lab):
            print(f"  {s.name}: {s.question}")
            print(f"    target: {s.mode} {s.metric}; early stopping: {'ASHA' if s.early_stopping else 'none'}; "
                  f"trials: {', '.join(f'{k} {s.profiles[k].trials}' for k in PROFILES)}; "
                  f"GPUs per trial: {s.gpus_per_trial:g}")
            for param, dist in registry.describe_space(s.space).items():
                print(f"    {param}: {dist}")


def cmd_prefetch(lab: str, data_dir: Path) -> None:
    try:
        chosen = registry.studies_of(lab)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    names = sorted({d for s in chosen for d in s.profiles["full"].datasets})
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} -> {data_dir}", flush=True)
        try:
            download_dataset(name, data_dir.resolve())
        except DataMissing as e:
            raise UsageError(str(e).splitlines()[0]) from None
    print(f"{lab}: {len(names)} dataset(s) ready in {data_dir.resolve()}")


def cmd_report(args: argparse.Namespace) -> int:
    try:
        chosen = [registry.get_study(args.lab, n) for n in args.study] if args.study else registry.studies_of(args.lab)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    if args.parent_run and len(chosen) != 1:
        raise UsageError("--parent-run needs exactly one --study")
    from .report import build_report

    uri = tracking_uri(args.mlflow_uri, Path.cwd())
    path = build_report(uri, args.lab, chosen, report_dir(args.out, args.lab), args.parent_run)
    print(f"report: {path}")
    return 0


def run_options(args: argparse.Namespace) -> tuple[list[Planned], RunOptions]:
    """Checks a `run.py LAB ...` command line (UsageError on bad input) and resolves it: the planned
    studies and the run's options. Downloads missing data of the full profile; creates nothing else."""
    from .launch import launch_dir  # [cluster #13] not Ray's temporary package folder under `ray job submit`

    launch = launch_dir()  # [cluster #13] was Path.cwd()
    if args.repeats < 0:
        raise UsageError(f"--repeats: must be >= 0, got {args.repeats}")
    planned = plan(args.command, args.study, args.profile, parse_sets(args.sets), args.seed)
    storage = args.storage or str(launch / "ray_results")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    check_storage(storage)
    data_dir = (args.data_dir or launch / "data").resolve()
    resume = None
    if args.resume:
        from .session import latest_experiment

        resume = {p.study.key: latest_experiment(storage, p.study) for p in planned}
        missing = [k for k, v in resume.items() if v is None]
        if missing:
            raise UsageError(f"--resume: no interrupted study {missing[0]} under {storage}")
    elif args.profile == "full":
        check_data(planned, args.profile, data_dir, args.offline)
    return planned, RunOptions(
        profile=args.profile, num_samples=args.num_samples, max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        workers_per_trial=args.workers_per_trial, mlflow_uri=tracking_uri(args.mlflow_uri, launch), storage=storage,
        data_dir=data_dir, launch=launch, seed=args.seed, ray_address=args.ray_address, offline=args.offline,
        max_failures=args.max_failures, repeats=args.repeats,
        report_dir=args.report_dir.resolve() if args.report_dir else None, resume=resume,
        quiet=args.quiet, wait_for_nodes=args.wait_for_nodes)


def cmd_run(args: argparse.Namespace, callbacks: Sequence[Any] = ()) -> int:
    planned, opts = run_options(args)
    from .session import run_planned

    # Only now: Ray, MLflow, results.
    return run_planned(planned, opts, callbacks=callbacks)


def main(argv: Sequence[str] | None = None, *, callbacks: Sequence[Any] = ()) -> int:
    """`run.py ...`; `callbacks`: extra Tune callbacks for every study's tuner (benchmarks)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "list":
            cmd_list()
            return 0
        if args.command == "prefetch":
            cmd_prefetch(args.lab, args.data_dir)
            return 0
        if args.command == "report":
            return cmd_report(args)
        return cmd_run(args, callbacks)
    except UsageError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("run.py: interrupted", file=sys.stderr)
        return 130
