"""Reading a study back for its report: an invocation's parent and child runs as plain data, the
`--repeats` invocation that re-ran it, the runs' figures, and the report logged back to the parent."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

PARENTS = "tags.`mlflow.parentRunId` IS NULL"  # a search filter: study invocations, not their trials


def _run_record(client: MlflowClient, run: Any) -> dict[str, Any]:
    tags = run.data.tags
    sampled = json.loads(tags["sampled"]) if "sampled" in tags else {}
    return {"run_id": run.info.run_id, "name": run.info.run_name or run.info.run_id, "status": run.info.status,
            "tags": dict(tags), "params": dict(run.data.params),
            "sampled": sampled, "metrics": dict(run.data.metrics), "start_time": run.info.start_time}


def read_invocation(uri: str, lab: str, study: str, parent_id: str | None = None,
                    kind: str = "search") -> dict[str, Any] | None:
    """A study invocation as plain data: its parent run and child runs (params, sampled params,
    final metrics, tags). The newest invocation of `study` unless `parent_id` is given."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(lab)
    if exp is None:
        return None
    if parent_id is not None:
        parent = client.get_run(parent_id)
    else:
        # Children carry the study's tags too: parents are the runs without a parent.
        found = [r for r in client.search_runs([exp.experiment_id], f"tags.study = '{study}' and {PARENTS}",
                                               order_by=["attributes.start_time DESC"], max_results=50)
                 if r.data.tags.get("kind", "search") == kind]
        if not found:
            return None
        parent = found[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=10_000)
    return {"parent": _run_record(client, parent), "children": [_run_record(client, c) for c in children]}


def read_invocations(uri: str, lab: str, study: str, limit: int = 10) -> list[dict[str, Any]]:
    """The newest `limit` search invocations of `study`, newest first (as read_invocation gives one)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(lab)
    if exp is None:
        return []
    found = [r for r in client.search_runs([exp.experiment_id], f"tags.study = '{study}' and {PARENTS}",
                                           order_by=["attributes.start_time DESC"], max_results=limit)
             if r.data.tags.get("kind", "search") == "search"]
    return [inv for r in found if (inv := read_invocation(uri, lab, study, parent_id=r.info.run_id))]


def read_repeats(uri: str, lab: str, parent_id: str) -> dict[str, Any] | None:
    """The `--repeats` invocation that re-ran the best configurations of search `parent_id`."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(lab)
    found = client.search_runs([exp.experiment_id], f"tags.repeats_of = '{parent_id}'",
                               order_by=["attributes.start_time DESC"], max_results=1) if exp else []
    return read_invocation(uri, lab, "", parent_id=found[0].info.run_id) if found else None


def download_figures(uri: str, run_id: str, dest: Path) -> list[Path]:
    """The PNG figures of a run (artifact folder `figures/`), downloaded into dest."""
    client = MlflowClient(tracking_uri=uri)
    try:
        names = [a.path for a in client.list_artifacts(run_id, "figures") if a.path.endswith(".png")]
    except Exception:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # a report's output stays readable
    return [Path(client.download_artifacts(run_id, name, str(dest))) for name in names]


def log_report(uri: str, run_id: str, folder: Path) -> None:
    MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(folder), "report")
