"""What every benchmark shares: the machine it ran on, medians of interleaved repeats, the result table.

Every benchmark measures its baseline in the same run as the thing it judges and reports their
ratio: on a shared, noisy machine absolute numbers drift by 2x from one minute to the next, a ratio
of interleaved measurements much less. The absolute numbers are printed too, with the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
# Tune warns on every sub-second epoch's experiment snapshot; Train's migration notes are noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
if str(REPO) not in sys.path:  # `python benchmarks/x.py` from anywhere: the project's packages import
    sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, load (other jobs on the machine), torch, GPU."""
    import torch

    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                            "python": platform.python_version(), "load_avg_1min": round(os.getloadavg()[0], 1),
                            "date": time.strftime("%Y-%m-%d %H:%M")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def interleaved(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Calls every measure once per round, `repeats` rounds: A B A B ..., so a burst of load from
    another job hits both sides instead of one."""
    out: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            out[name].append(measure())
    return out


@dataclass
class Verdict:
    """One benchmark's answer: `ratio` compared with `goal` (`<=` or `>=`)."""

    name: str
    ratio: float
    ratio_label: str              # what the ratio is, e.g. "project loader / DataLoader (img/s)"
    goal_op: str                  # "<=" or ">="
    goal: float
    rows: list[tuple[str, float, str]] = field(default_factory=list)  # (what, value, unit)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.ratio <= self.goal if self.goal_op == "<=" else self.ratio >= self.goal


def _fmt(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def print_verdict(v: Verdict, mode: str, info: dict[str, Any]) -> None:
    print(f"== {v.name} [{mode}] ==")
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}"
          f"{', GPU ' + info['gpu'] if 'gpu' in info else ', no GPU'}; load avg {info['load_avg_1min']} "
          f"(1 min, at the end); {info['date']}")
    width = max([len(r[0]) for r in v.rows] + [10])
    for what, value, unit in v.rows:
        print(f"  {what:<{width}}  {_fmt(value):>12} {unit}")
    status = "PASS" if v.passed else "FAIL"
    print(f"  ratio {v.ratio_label}: {v.ratio:.3f}   goal {v.goal_op} {v.goal:g}   {status}")
    for note in v.notes:
        print(f"  note: {note}")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smoke test: well under a minute, smaller sizes")
    p.add_argument("--repeats", type=int, default=0, help="interleaved repeats (default: 1 quick, 3 full)")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    return p


def repeats_of(args: argparse.Namespace, full: int = 3) -> int:
    return args.repeats or (1 if args.quick else full)


def finish(v: Verdict, args: argparse.Namespace) -> Verdict:
    """Prints the table (and writes JSON when asked); returns the verdict."""
    info = machine()
    mode = "quick" if args.quick else "full"
    print_verdict(v, mode, info)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mode": mode, "machine": info, "passed": v.passed, **asdict(v)}, indent=2))
    return v


@contextlib.contextmanager
def fresh_actor_per_trial() -> Iterator[None]:
    """Tune's `reuse_actors=False` for every tuner built meanwhile (what orchestrator/tuning.py did
    before it reused actors), by a benchmark-side patch of `ray.tune.TuneConfig`: the baseline of
    the between-trials cost."""
    from ray import tune

    original = tune.TuneConfig
    tune.TuneConfig = lambda *args, **kwargs: original(*args, **{**kwargs, "reuse_actors": False})
    try:
        yield
    finally:
        tune.TuneConfig = original


def start_ray(cpus: int | None = None) -> float:
    """A private local Ray (never joins another on the machine); returns its start-up seconds."""
    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus or max(2, os.cpu_count() or 2), object_store_memory=300 * 2**20,
             log_to_driver=False, include_dashboard=False)
    return time.perf_counter() - start
