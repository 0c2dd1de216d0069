"""Everything MLflow, from one place: the driver. The only package of the project that imports mlflow.

One module per role:
- `callback`: `MlflowTracker`, the Tune callback that owns a study's runs (parent per invocation,
  child per trial) and writes them on one background thread; `TrialView`, its snapshot of a trial;
  `Tested`, what a test-once study's test phase adds to a selected trial's run.
- `lookups`: read-only questions before a study (`Lookup`, `find_parent`).
- `server`: where MLflow lives (`default_uri`, `init_store`) and the `mlflow server` process
  (`ensure_server`, `stop_server`); `ui_app`, the `mlflow ui --app-name dla` app (not imported here:
  MLflow's server loads it).
- `readback`: a finished study read back for its report (`read_invocation(s)`, `read_repeats`,
  `download_figures`, `log_report`).
- What the UI shows, for the callback: `naming` (child runs named by what they tried), `results`
  (logged metric names, bookkeeping tags, a trial's best and final values), `notes` (the parent's and
  children's descriptions, the comparison table, the saved view of a study's trials, UI links).

`orchestrator.tracking.MlflowTracker` must stay importable from here: Tune pickles its callbacks into
`tuner.pkl` by class path, and files written before this was a package name that path.
"""
from __future__ import annotations

from ..provenance import git_commit  # not MLflow; re-exported until its importers use orchestrator.provenance
from .callback import MAX_BATCH, SKIPPED_KEYS, TUNE_KEYS, MlflowTracker, Tested, TrialView, experiment_id
from .lookups import Lookup, find_parent
from .readback import download_figures, log_report, read_invocation, read_invocations, read_repeats
from .server import UI_APP, default_uri, ensure_server, init_store, stop_server

__all__ = ["MAX_BATCH", "SKIPPED_KEYS", "TUNE_KEYS", "UI_APP", "Lookup", "MlflowTracker", "Tested", "TrialView", "default_uri",
           "download_figures", "ensure_server", "experiment_id", "find_parent", "git_commit", "init_store",
           "log_report", "read_invocation", "read_invocations", "read_repeats", "stop_server"]
