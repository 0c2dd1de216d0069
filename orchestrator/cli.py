"""Command line: `python orchestrator/run.py {list | prefetch LAB | LAB} ...` (see --help).

Everything a user can get wrong is checked before Ray starts or MLflow is touched, so bad input
gives one line, exit code 2, and leaves no run and no results folder behind. The only reader of
argparse: a run gets the planned studies and one frozen `RunOptions` (orchestrator.options).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import io
import math
import os
import socket
import sqlite3
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from trainables.config import ConfigError, bounds_of, field_names, from_dict, to_dict
from trainables.data import DataMissing, download_dataset

from . import studies as registry
from .options import EXIT_INTERRUPTED, EXIT_USAGE, Planned, RunOptions, UsageError, report_dir, tracking_uri
from .studies import PROFILES, Study

RUN_KEYS = {"train_backend": ("auto", "ray-train")}  # --set keys for the wiring, not the trainable


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + line
        raise UsageError(message)


SEED_MAX = 2**32 - 1  # Optuna's samplers (numpy) take 32-bit seeds


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0..{SEED_MAX} (2**32-1), got {value}")
    return value


def _max_failures(text: str) -> int:
    value = _integer(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be >= -1 (-1: retry without limit), got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
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
                   help="override a config field of every chosen study that has it, or of one study with "
                        "STUDY.KEY=VALUE; setting a searched field pins it (train_backend=ray-train forces TorchTrainer)")
    p.add_argument("--mlflow-uri", help="tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--storage", help="Tune/Train storage: a folder or a URI shared by all nodes (default ./ray_results)")
    p.add_argument("--data-dir", type=Path, help="dataset folder for the full profile (default ./data)")
    p.add_argument("--seed", type=_seed, default=0, help=f"seed of the search and of every trial, 0..{SEED_MAX} (default 0)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, a cluster on this machine, "
                                         "or local); `local` forces a private Ray")  # [cluster #13]
    p.add_argument("--wait-for-nodes", type=_positive_float, default=900.0, metavar="SECONDS",  # [cluster #13]
                   help="how long a trial may wait for the autoscaler's nodes before the study ends (default 900)")
    p.add_argument("--offline", action="store_true", default=os.environ.get("DLA_OFFLINE") == "1",
                   help="never download; missing data is an error")
    p.add_argument("--max-failures", type=_max_failures, default=1,
                   help="retries of a failed trial from its checkpoint (default 1; -1: without limit)")
    p.add_argument("--repeats", type=_non_negative_int, default=0, metavar="K",
                   help="after the search, re-run the best configuration (of each compared group) with K seeds; "
                        "the report shows mean ± std")
    p.add_argument("--report-dir", type=Path, help="where the report goes (default ./reports/LAB-TIMESTAMP)")
    p.add_argument("--resume", action="store_true",
                   help="go on with the newest run of LAB under --storage (with --study: the newest that had it): "
                        "the study it was in, failed trials retried, then the studies that never started; "
                        "its saved settings are used, finished trials are not rerun")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table, no trial-process output (it stays in Ray's logs)")
    p.add_argument("--smoke", action="store_true",
                   help="before a long run: each chosen study of the profile for 2 trials of 1 epoch on a few hundred "
                        "images, then one line per study saying whether data, model, loop, logging and report work "
                        "(writes under ./smoke/ unless a store, --storage or --report-dir is named)")


# ---------------------------------------------------------------------------------------- plan
def parse_sets(groups: Sequence[Sequence[str]]) -> dict[str, str]:
    """`--set KEY=VALUE ...` as {KEY: VALUE}. KEY is a setting of the lab's studies (applied to each
    chosen study that has it) or STUDY.KEY (that study only); see plan()."""
    out: dict[str, str] = {}
    for item in (i for g in groups for i in g):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        study, dot, name = key.rpartition(".")
        if not sep or not name or (dot and not study):
            raise UsageError(f"--set expects KEY=VALUE or STUDY.KEY=VALUE, got {item!r}")
        if key in out:  # which one was meant?
            raise UsageError(f"--set {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def chosen_studies(lab: str, names: Sequence[str] | None) -> list[Study]:
    """The --study names (each once), or the lab's studies in order."""
    duplicated = sorted({n for n in names or () if list(names).count(n) > 1})
    if duplicated:
        raise UsageError(f"--study {duplicated[0]!r} given twice")
    try:
        return [registry.get_study(lab, n) for n in names] if names else registry.studies_of(lab)
    except KeyError as e:
        raise UsageError(e.args[0]) from None


def plan(lab: str, names: Sequence[str] | None, profile: str, sets: dict[str, str], seed: int) -> list[Planned]:
    """The chosen studies, each with its validated base config: the profile's values, then `sets`.
    A KEY applies to every chosen study that has that setting (one line says which, when not all of
    them do) and is an error only when none has it; STUDY.KEY applies to that study only, over KEY.
    A study whose setting is a constant (a range of one value, e.g. a CAM trial's one epoch) keeps
    it under a lab-wide KEY; STUDY.KEY must hold the constant. Pins: the keys set here, and the
    profile's `pinned` keys (the space does not sample them)."""
    chosen = chosen_studies(lab, names)
    scoped: dict[str, dict[str, str]] = {s.name: {} for s in chosen}
    lab_wide: dict[str, str] = {}
    for key, value in sets.items():
        target, _, name = key.rpartition(".")
        if not target:
            lab_wide[key] = value
        elif target in scoped:
            scoped[target][name] = value
        else:
            try:
                registry.get_study(lab, target)
            except KeyError as e:
                raise UsageError(f"--set {key}: {e.args[0]}") from None
            raise UsageError(f"--set {key}: {target} is not among the chosen studies ({', '.join(scoped)})")
    notes = [_apply_lab_wide(chosen, key, value, scoped) for key, value in lab_wide.items()]
    planned = []
    for study in chosen:
        own = scoped[study.name]
        run_keys = {k: v for k, v in own.items() if k in RUN_KEYS}
        for key, value in run_keys.items():
            if value not in RUN_KEYS[key]:
                raise UsageError(f"--set {key}: expected one of {list(RUN_KEYS[key])}, got {value!r}")
        config_sets = {k: v for k, v in own.items() if k not in RUN_KEYS}
        base = {"seed": seed, **study.base_config(profile)}
        try:  # typed and validated, together with the profile's values
            typed = to_dict(from_dict(study.config_cls, {**base, **config_sets}))
        except ConfigError as e:  # an error about a key that was not set comes from this study's values
            named = str(e).partition(":")[0] in config_sets or len(chosen) == 1
            raise UsageError(f"--set {e}" + ("" if named else f" ({study.key})")) from None
        pins = {k: base[k] for k in study.profiles[profile].pinned} | {k: typed[k] for k in config_sets}
        planned.append(Planned(study, {**base, **pins}, pins, run_keys))
    for note in filter(None, notes):
        print(note, flush=True)
    return planned


def _kept_constant(study: Study, key: str, value: str) -> Any:
    """The declared range of `key` when it allows one value only (a constant of the study, e.g. a CAM
    trial's one epoch) and `value` is another; else None."""
    bounds = bounds_of(study.config_cls, key)
    if bounds is None or bounds.ge is None or bounds.ge != bounds.le:
        return None
    try:
        return None if bounds.holds(float(value)) else bounds
    except ValueError:
        return bounds


def _apply_lab_wide(chosen: list[Study], key: str, value: str, scoped: dict[str, dict[str, str]]) -> str:
    """Adds a lab-wide `--set key=value` to `scoped` for each chosen study that takes it (STUDY.KEY
    given too wins); UsageError when none has the key. Returns a line saying where it applies, or ""."""
    has = [s for s in chosen if key in RUN_KEYS or key in field_names(s.config_cls)]
    if not has:
        known = sorted({f for s in chosen for f in field_names(s.config_cls)} | set(RUN_KEYS))
        close = difflib.get_close_matches(key, known, n=1)
        raise UsageError(f"--set {key}: no chosen study has this setting"
                         + (f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"))
    kept = {s.name: b for s in has if (b := _kept_constant(s, key, value)) is not None}
    takers = [s for s in has if s.name not in kept] or has  # constants only: their error is the answer
    for s in takers:
        scoped[s.name].setdefault(key, value)
    if len(takers) == len(chosen):
        return ""
    lacking = [s.name for s in chosen if s not in has]
    line = f"--set {key}={value}: {', '.join(s.name for s in takers)}"
    if lacking:
        line += f" ({', '.join(lacking)} {'have' if len(lacking) > 1 else 'has'} no {key})"
    for name, b in kept.items():
        line += f"; {name} keeps {key}={b.ge:g}" + (f" ({b.note})" if b.note else "")
    return line


# Storage URIs pyarrow (hence Tune) understands; any other scheme is a typo. Remote ones are not
# probed here (that would need the cluster's credentials).
STORAGE_SCHEMES = {"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}


def _nearest_folder(path: Path, what: str) -> None:
    """`path`, or its nearest existing parent, is a writable folder (nothing is created)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{what} {path}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UsageError(f"{what} {path}: not writable ({e.strerror})") from None


def check_storage(storage: str) -> None:
    """The storage folder (or its nearest existing parent) must be a writable folder; a URI must
    name a filesystem Tune knows. Nothing is created here."""
    scheme, sep, rest = storage.partition("://")
    if not sep:
        _nearest_folder(Path(storage), "--storage")
    elif scheme.lower() not in STORAGE_SCHEMES:
        raise UsageError(f"--storage {storage}: unknown filesystem {scheme!r} (known: {', '.join(sorted(STORAGE_SCHEMES))})")
    elif scheme.lower() == "file":
        _nearest_folder(Path(urllib.parse.urlparse(storage).path or "/"), "--storage")


def _sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///PATH` URI (relative to the launch folder with three slashes,
    absolute with four), None for an in-memory database."""
    path = uri.split("://", 1)[1].split("?", 1)[0]
    return Path(path[1:]) if path.startswith("/") and len(path) > 1 else None


def _check_sqlite(uri: str, path: Path, what: str, must_exist: bool) -> None:
    """A SQLite store is usable: an MLflow database that opens read-only and passes SQLite's quick
    check, or (`must_exist` False) a file to be created in a writable folder."""
    if not path.exists():
        if must_exist:
            raise UsageError(f"{what} {uri}: no tracking store at {path}")
        _nearest_folder(path.parent, what)
        return
    if not path.is_file():
        raise UsageError(f"{what} {uri}: {path} is not a file")
    # Even read-only, SQLite makes -wal / -shm files beside a database whose header says WAL mode
    # (a corrupt one too): the check removes those it made, so a refused store is left as it was.
    sidecars = [path.with_name(path.name + end) for end in ("-wal", "-shm")]
    existed = {p for p in sidecars if p.exists()}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)) as con:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        raise UsageError(f"{what} {uri}: {path} is not a readable SQLite database ({e})") from None
    finally:
        for made in set(sidecars) - existed:
            made.unlink(missing_ok=True)
    if check != "ok":
        raise UsageError(f"{what} {uri}: {path} is corrupt (SQLite quick_check: {_one_line(str(check))})")
    if tables and "experiments" not in tables:
        raise UsageError(f"{what} {uri}: {path} is a SQLite database but not an MLflow tracking store")
    if tables:
        from .tracking import init_store

        try:  # what MLflow itself says of the store (e.g. a schema that needs `mlflow db upgrade`)
            init_store(uri)
        except Exception as e:
            raise UsageError(f"{what} {uri}: MLflow cannot use it ({_one_line(str(e), 200)})") from None


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def check_store(uri: str, launch: Path, *, must_exist: bool = False, what: str = "--mlflow-uri") -> None:
    """The tracking store is usable, checked before Ray starts and without creating anything: a
    SQLite file (see _check_sqlite), a server that answers (on this machine with nobody answering,
    run.py starts one on the launch folder's store, which is checked instead), a file store only
    where MLflow allows them; database servers are left to MLflow."""
    scheme = uri.partition(":")[0].lower() if "://" in uri else ""
    if scheme == "sqlite":
        path = _sqlite_path(uri)
        if path is not None:
            _check_sqlite(uri, path if path.is_absolute() else launch / path, what, must_exist)
        return
    if scheme in ("http", "https"):
        try:
            parsed = urllib.parse.urlparse(uri)
            port = parsed.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise UsageError(f"{what} {uri}: not a valid address") from None
        if parsed.hostname in ("127.0.0.1", "localhost") and not _listening(parsed.hostname, port):
            from .tracking import default_uri

            if must_exist:
                raise UsageError(f"{what} {uri}: no MLflow server answers there")
            check_store(default_uri(launch), launch, what=f"{what} {uri} (the store run.py serves):")
            return
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
                return
        except urllib.error.HTTPError:  # something answers (a proxy asking for credentials, ...): MLflow's call
            return
        except (OSError, ValueError) as e:
            raise UsageError(f"{what} {uri}: no MLflow server answers there ({_one_line(str(e), 120)})") from None
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise UsageError(f"{what} {uri}: MLflow 3 refuses file stores (set MLFLOW_ALLOW_FILE_STORE=true, or use "
                             f"sqlite:///PATH)")
        return
    if scheme.split("+")[0] not in ("postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"):
        raise UsageError(f"{what} {uri}: not a tracking URI MLflow knows (sqlite:///PATH, http://HOST:PORT, ...)")


class _LazyLookup:
    """orchestrator.tracking.Lookup, made on first use: a source given as a file needs no store."""

    def __init__(self, uri: str, workdir: Path) -> None:
        self.uri, self.workdir, self._lookup = uri, workdir, None

    def _real(self) -> Any:
        if self._lookup is None:
            from .tracking import Lookup

            self._lookup = Lookup(self.uri, self.workdir)
        return self._lookup

    def latest_best_run(self, experiment: str, studies: list[str]) -> str | None:
        return self._real().latest_best_run(experiment, studies)

    def download_model(self, run_id: str, dest: Path) -> Path:
        return self._real().download_model(run_id, dest)


def check_sources(planned: list[Planned], uri: str, launch: Path) -> None:
    """A source model given with --set (source_run or source_checkpoint) exists and fits the study,
    checked now (into a temporary folder, removed), not when the study starts. A run id with no
    store yet is missing: the store is not created just to look."""
    from .sources import resolve_source

    for p in planned:
        run = p.base.get("source_run")
        if p.study.source is None or not (run or p.base.get("source_checkpoint")):
            continue
        sqlite = _sqlite_path(uri) if uri.lower().startswith("sqlite:") else None
        if run and sqlite is not None and not (sqlite if sqlite.is_absolute() else launch / sqlite).exists():
            raise UsageError(f"{p.study.key}: source run {run}: no MLflow run {run!r} (there is no tracking store "
                             f"at {sqlite} yet)")
        with tempfile.TemporaryDirectory(prefix="dla-source-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            try:
                resolve_source(p.study, dict(p.base), _LazyLookup(uri, Path(tmp)))
            except (ValueError, OSError) as e:
                raise UsageError(f"{p.study.key}: {e}") from None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_data(planned: list[Planned], profile: str, data_dir: Path, offline: bool) -> None:
    """What each planned study's resolved config reads from data_dir (datasets, OOD sets, models,
    the source's data; `--set` ones too), on either profile: downloaded here, once, in the driver
    (never racing in every worker), or with --offline one line naming it (orchestrator.preflight)."""
    from . import preflight

    preflight.check(planned, data_dir, offline, profile)


# ---------------------------------------------------------------------------------------- commands
def cmd_list() -> None:
    for lab in registry.labs():
        print(lab)
        for s in registry.studies_of(lab):
            print(f"  {s.name}: {s.question}")
            asha = ("ASHA within each cell" if s.cells else "ASHA") if s.early_stopping else "none"
            print(f"    target: {s.mode} {s.metric}; early stopping: {asha}; GPUs per trial: {s.gpus_per_trial:g}")
            print(f"    {_describe_cells(s)}")
            if s.source is not None:  # what its trials start from (orchestrator.sources resolves it)
                found = ", ".join(dict.fromkeys(n for group in s.source.candidates for n in group))
                print("    starts from a trained model: --set source_run=ID, else "
                      + (f"the best fitting trial of the latest {found} study, else " if found else "")
                      + "trained once for the study")
            for param, dist in registry.describe_space(s.space).items():
                print(f"    {param}: {dist}")


def _describe_cells(s: Study) -> str:
    """`compares depth x residual: 12 cells; trials (cells x per cell): quick 12 x 2 = 24, full 12 x 2 = 24`."""
    budgets = []
    for k in PROFILES:
        cells, per_cell = s.trials(k) // s.profiles[k].per_cell, s.profiles[k].per_cell
        budgets.append(f"{k} {cells} x {per_cell} = {cells * per_cell}")
    counts = {k: len(s.cells_of(k)) for k in PROFILES}
    shown = f"{counts['quick']} cells" if len(set(counts.values())) == 1 else \
        ", ".join(f"{k} {n}" for k, n in counts.items()) + " cells"
    compared = (f"compares {' x '.join(s.factors)}: {shown}" if s.cells
                else "compares nothing inside the study: 1 cell")
    return f"{compared}; trials (cells x per cell): {', '.join(budgets)}"


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
    chosen = chosen_studies(args.lab, args.study)
    if args.parent_run and len(chosen) != 1:
        raise UsageError("--parent-run needs exactly one --study")
    uri = tracking_uri(args.mlflow_uri, Path.cwd())
    check_store(uri, Path.cwd(), must_exist=True)
    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            raise UsageError(f"--out {args.out}: not a folder")
        _nearest_folder(args.out.resolve(), "--out")
    from .report import build_report

    path = build_report(uri, args.lab, chosen, report_dir(args.out, args.lab), args.parent_run)
    print(f"report: {path}")
    return 0


def run_options(args: argparse.Namespace) -> tuple[list[Planned], RunOptions]:
    """Checks a `run.py LAB ...` command line (UsageError on bad input) and resolves it: the planned
    studies and the run's options (with --resume: those saved with the run resumed). Downloads
    missing data of the full profile; creates nothing else."""
    from .launch import launch_dir  # [cluster #13] not Ray's temporary package folder under `ray job submit`

    launch = launch_dir()  # [cluster #13] was Path.cwd()
    storage = args.storage or str(launch / "ray_results")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    check_storage(storage)
    uri = tracking_uri(args.mlflow_uri, launch)
    report = args.report_dir.resolve() if args.report_dir else None
    if report is not None:
        if report.exists() and not report.is_dir():
            raise UsageError(f"--report-dir {report}: not a folder")
        _nearest_folder(report, "--report-dir")
    if args.resume:
        planned, opts = resumed_run(args, storage)
        # The run's own store unless one is named now; how to run (not what) may change.
        uri = uri if args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") else opts.mlflow_uri
        check_store(uri, launch)
        return planned, dataclasses.replace(opts, mlflow_uri=uri, ray_address=args.ray_address, quiet=args.quiet,
                                            report_dir=report, launch=launch, wait_for_nodes=args.wait_for_nodes)
    planned = plan(args.command, args.study, args.profile, parse_sets(args.sets), args.seed)
    data_dir = (args.data_dir or launch / "data").resolve()
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: not a folder")
    check_data(planned, args.profile, data_dir, args.offline)  # on both profiles: a --set dataset=cifar10 too
    check_store(uri, launch)
    check_sources(planned, uri, launch)
    return planned, RunOptions(
        profile=args.profile, num_samples=args.num_samples, max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        workers_per_trial=args.workers_per_trial, mlflow_uri=uri, storage=storage,
        data_dir=data_dir, launch=launch, seed=args.seed, ray_address=args.ray_address, offline=args.offline,
        max_failures=args.max_failures, repeats=args.repeats, report_dir=report, resume=None, quiet=args.quiet,
        wait_for_nodes=args.wait_for_nodes)


def resumed_run(args: argparse.Namespace, storage: str) -> tuple[list[Planned], RunOptions]:
    """--resume: the newest run of the lab under storage (with --study: the newest that had those
    studies), its studies (those named, or all of them, in their order) and its saved options."""
    from . import invocation

    lab, names = args.command, args.study
    chosen_studies(lab, names)  # known names, each once
    try:
        record = invocation.newest(storage, lab, names)
    except OSError as e:
        raise UsageError(f"--resume: cannot read {storage} ({_one_line(str(e), 120)})") from None
    which = f" with {', '.join(names)}" if names else ""
    if record is None:
        raise UsageError(f"--resume: no run of {lab}{which} under {storage}: nothing to resume")
    wanted = [s for s in record.studies if not names or s[0] in names]
    done = all((pr := record.progress.get(s[0])) is not None and pr.done is not None and pr.done.ok for s in wanted)
    # A driver killed after its last study ended but before the report was written still has the
    # report to do: that is resumed too. Named studies that are a part of a larger run have no
    # report of their own to finish (the run's comes when its other studies end).
    if done and (record.report or len(wanted) < len(record.studies)):
        raise UsageError(f"--resume: the newest run of {lab}{which} under {storage} finished every trial: "
                         f"nothing to resume")
    try:
        planned = [Planned(registry.get_study(lab, name), base, pins, run_keys) for name, base, pins, run_keys in wanted]
    except KeyError as e:
        raise UsageError(f"--resume: {e.args[0]}") from None
    return planned, dataclasses.replace(record.opts, resume=record.path)


def cmd_run(args: argparse.Namespace, callbacks: Sequence[Any] = ()) -> int:
    if args.smoke and args.resume:
        raise UsageError("--smoke starts a new run of its own; it cannot --resume one")
    planned, opts = run_options(args)
    if args.smoke:  # the plan shrunk, then a line per study (orchestrator/smoke.py)
        from . import smoke

        opts = smoke.options(opts, planned, named_store=bool(args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")),
                             named_storage=args.storage is not None, named_report=args.report_dir is not None)
        return smoke.run(smoke.shrink(planned), opts, callbacks=callbacks)
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
        # One line whatever the value quoted in it held (a --set value can hold a newline).
        print(f"run.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("run.py: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
