"""One `run.py LAB ...` invocation as a record in storage, so that `--resume` can go on with it: the
planned studies (their validated config values), the run options, and how far it got (each study's
Tune experiment, its `--repeats` experiment, their outcomes, the report).

The session writes the record before the first study starts and rewrites it (atomically) at every
step, before the step creates anything: whatever moment the driver dies at, the record says what
comes next (the study it was in, then those that never started). It lives beside the Tune
experiments: `<storage>/dla_runs/<lab>-<time>.pkl`. Only pyarrow here: the CLI reads records before
Ray starts.
"""
from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyarrow.fs as pafs

from .options import RunOptions

RECORDS = "dla_runs"  # the records' folder under --storage


@dataclass
class Outcome:
    """How a study (or one of its Tune experiments) ended."""

    study: str                     # its key, lab/name
    trials: int = 0                # trials the experiment had
    failed: int = 0                # trials that ended in error (after their retries)
    first_error: str = ""          # the first failed trial's error, one line
    details: str = ""              # where its traceback is (the trial's error.txt, or the driver's)
    interrupted: bool = False      # Ctrl-C, or runs left open: `--resume` continues
    crashed: str = ""              # a driver-side error that stopped the study, one line

    @property
    def ok(self) -> bool:
        return not (self.failed or self.interrupted or self.crashed)

    def line(self) -> str:
        """The study's last console line when it did not finish every trial."""
        if self.crashed:
            return f"{self.study}: study failed ({self.crashed}; details: {self.details})"
        return (f"{self.study}: {self.failed} of {self.trials} trials failed "
                f"(first error: {self.first_error}; details: {self.details})")

    def __add__(self, other: "Outcome") -> "Outcome":
        """A search and its --repeats as one study outcome: failures add up, the first error stays first."""
        first = self if (self.failed or self.crashed) else other
        return Outcome(self.study, self.trials + other.trials, self.failed + other.failed, first.first_error,
                       first.details or other.details, self.interrupted or other.interrupted,
                       self.crashed or other.crashed)


@dataclass
class Progress:
    """How far one study of the invocation got."""

    experiment: str = ""            # the search's Tune experiment (path or URI), once named
    searched: Outcome | None = None  # the search's outcome, once it ended (not interrupted)
    tests: str = ""                 # the test phase's experiment (a test-once study), once named
    tested: Outcome | None = None   # the test phase's outcome, once it ended (not interrupted)
    repeats: str = ""               # the --repeats experiment, once named
    done: Outcome | None = None     # the study's outcome (search + repeats), once it ended


@dataclass
class Invocation:
    lab: str
    studies: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, str]]]  # (name, base, pins, run_keys), in order
    opts: RunOptions
    progress: dict[str, Progress] = field(default_factory=dict)
    report: str = ""                # the report's path, once written
    path: str = ""                  # where the record is (path or URI)

    @property
    def finished(self) -> bool:
        """Nothing left to do: every study ended with every trial finished, and the report was written."""
        return bool(self.report) and all((p := self.progress.get(name)) is not None and p.done is not None
                                         and p.done.ok for name, *_ in self.studies)

    def save(self) -> None:
        fs, path = filesystem(self.path)
        tmp = f"{path}.tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(pickle.dumps(self))
        fs.move(tmp, path)  # a reader never sees half a record


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """Storage is a local folder or a URI (s3://, gs://, file://, ...): pyarrow reaches both, as Tune does."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def create(storage: str, lab: str, studies: list[tuple[str, dict, dict, dict]], opts: RunOptions) -> Invocation:
    """A new record (not yet saved) under storage, named by the time it was made."""
    now = time.time_ns()  # one instant: the name sorts by creation, to the microsecond
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now // 10**9)) + f"-{now // 1000 % 10**6:06d}"
    path = f"{storage.rstrip('/')}/{RECORDS}/{lab}-{stamp}.pkl"
    fs, fs_path = filesystem(path)
    fs.create_dir(fs_path.rpartition("/")[0], recursive=True)
    return Invocation(lab, studies, opts, {name: Progress() for name, *_ in studies}, path=path)


def load(path: str) -> Invocation:
    fs, fs_path = filesystem(path)
    with fs.open_input_stream(fs_path) as f:
        record: Invocation = pickle.loads(f.read())
    record.path = path
    return record


def newest(storage: str, lab: str, names: Sequence[str] | None = None) -> Invocation | None:
    """The newest readable record of `lab` under storage whose studies include all of `names` (any, without)."""
    fs, root = filesystem(f"{storage.rstrip('/')}/{RECORDS}")
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    found = sorted((i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(f"{lab}-")
                    and i.base_name.endswith(".pkl")), reverse=True)
    for name in found:
        try:
            record = load(f"{storage.rstrip('/')}/{RECORDS}/{name}")
        except Exception:  # unreadable (older code, torn copy): not one to resume
            continue
        if not names or set(names) <= {n for n, *_ in record.studies}:
            return record
    return None
