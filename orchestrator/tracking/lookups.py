"""Read-only questions to MLflow that the driver asks before a study runs: which parent run a Tune
experiment wrote (`--resume`), and which trial run holds the model a study starts from."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from mlflow.tracking import MlflowClient

from .readback import PARENTS


def find_parent(uri: str, experiment: str, tune_experiment: str) -> str | None:
    """The parent run of the study invocation that wrote Tune experiment `tune_experiment`."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.tune_experiment = '{tune_experiment}'", max_results=1)
    return runs[0].info.run_id if runs else None


class Lookup:
    """Read-only questions to MLflow that a study may ask before it runs (driver side)."""

    def __init__(self, uri: str, workdir: Path) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.workdir = workdir  # where downloads go: the study's storage, seen by every node

    def latest_best_run(self, experiment: str, studies: Sequence[str]) -> str | None:
        """The best finished trial run of the most recent invocation of any of `studies`.

        "Best" is the parent run's `best_run_id` tag, which the tracker's summary chose with
        `orchestrator.ranking.best` over each trial's best value of the study's metric (the children's
        `best_<metric>`). It is not re-ranked here: the parent does not record the mode, so a ranking
        here could disagree with the summary."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        # One query per study: MLflow's search grammar has no IN for tags.
        parents = sorted((r for name in studies for r in self.client.search_runs(
            [exp.experiment_id], f"tags.study = '{name}' and {PARENTS}", order_by=["attributes.start_time DESC"],
            max_results=20)
            if r.data.tags.get("kind", "search") == "search"), key=lambda r: r.info.start_time, reverse=True)
        for parent in parents:
            best = parent.data.tags.get("best_run_id")
            if best and self.has_model(best):
                return best
        return None

    def has_model(self, run_id: str) -> bool:
        try:
            return any(a.path.endswith("model.pt") for a in self.client.list_artifacts(run_id, "checkpoint"))
        except Exception:
            return False

    def download_model(self, run_id: str, dest: Path) -> Path:
        """Downloads `checkpoint/model.pt` of a run into dest; FileNotFoundError when it has none."""
        try:
            self.client.get_run(run_id)
        except Exception:
            raise FileNotFoundError(f"no MLflow run {run_id!r}") from None
        if not self.has_model(run_id):
            raise FileNotFoundError(f"MLflow run {run_id} has no checkpoint/model.pt")
        dest.mkdir(parents=True, exist_ok=True)
        # No progress bar: errors from here must stay one line.
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        return Path(self.client.download_artifacts(run_id, "checkpoint/model.pt", str(dest)))
