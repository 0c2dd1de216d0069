"""`mlflow ui --app-name dla` (orchestrator.tracking.ui_app): MLflow's server, with a UI that opens an
experiment on its runs. The browser half is tests/test_mlflow_ui.py; these check the wiring fast."""
from __future__ import annotations

import importlib.metadata
import json
import re

from orchestrator.tracking import ui_app


def test_mlflow_finds_the_app_by_its_name():
    apps = {e.name: e.value for e in importlib.metadata.entry_points(group="mlflow.app")}
    assert apps.get("dla") == "orchestrator.tracking.ui_app:create_app"


def test_the_default_is_stored_before_the_ui_bundle_runs_and_only_when_none_is():
    page = '<!doctype html><html><head><meta charset="utf-8"/><script defer src="main.js"></script></head></html>'
    edited = ui_app.with_default_workflow(page)
    assert edited.index(ui_app.SCRIPT) < edited.index('src="main.js"') and edited.count("<script") == 2
    assert edited.replace(ui_app.SCRIPT, "") == page
    # What the UI's useLocalStorage reads: JSON under `${key}_v${version}`, only if getItem gave null.
    stored = re.search(r"setItem\('([^']+)','([^']+)'\)", ui_app.SCRIPT)
    assert stored.group(1) == "mlflow.workflowType_v1" and json.loads(stored.group(2)) == "machine_learning"
    assert "getItem('mlflow.workflowType_v1')===null" in ui_app.SCRIPT


def test_the_server_serves_the_edited_page_and_the_rest_unchanged(monkeypatch):
    monkeypatch.setenv("_MLFLOW_SGI_NAME", "gunicorn")  # the Flask app itself (uvicorn gets it wrapped)
    client = ui_app.create_app().test_client()
    index = client.get("/")
    assert index.status_code == 200 and ui_app.SCRIPT in index.get_data(as_text=True)
    assert client.get("/health").get_data(as_text=True) == "OK"


def test_under_uvicorn_the_app_is_mlflows_fastapi_wrapper(monkeypatch):
    from fastapi import FastAPI

    monkeypatch.setenv("_MLFLOW_SGI_NAME", "uvicorn")
    assert isinstance(ui_app.create_app(), FastAPI)
