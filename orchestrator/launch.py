"""The launch folder: where run.py's relative paths and defaults (`ray_results/`, `mlflow.db`,
`reports/`, `data/`) land.

Normally the folder run.py starts in. `ray job submit --working-dir .` starts it in Ray's unpacked
copy of that folder (`<session>/runtime_resources/working_dir_files/_ray_pkg_<hash>`), which Ray
deletes with the session (and replaces when the folder's contents change): results written there
are lost. There the launch folder is `~/dla-runs` on the node the job's driver runs on (the head),
or `$DLA_RUNS_DIR`; run.py says so in one line. A cluster's shared paths are passed as absolute
`--storage`, `--data-dir`, `--mlflow-uri` anyway (README, "On a cluster").
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def in_ray_package(folder: Path) -> bool:
    parts = folder.resolve().parts
    return "runtime_resources" in parts and any(p.startswith("_ray_pkg_") for p in parts)


def launch_dir() -> Path:
    """The launch folder, made the working directory (relative paths then mean the same to every
    part of run.py)."""
    here = Path.cwd()
    if not in_ray_package(here):
        return here
    lasting = Path(os.environ.get("DLA_RUNS_DIR", "~/dla-runs")).expanduser().resolve()
    lasting.mkdir(parents=True, exist_ok=True)
    os.chdir(lasting)
    print(f"run.py: started in Ray's temporary copy of the job's working dir; relative paths and the defaults "
          f"(ray_results, mlflow.db, reports) go to {lasting} (DLA_RUNS_DIR)", file=sys.stderr, flush=True)
    return lasting
