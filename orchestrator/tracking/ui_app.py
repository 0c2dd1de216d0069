"""`mlflow ui --app-name dla`: MLflow's own server whose UI opens experiments on their runs.

MLflow 3.17's UI decides whether an experiment is shown as GenAI (traces) or model training from the
page's `workflowType` URL parameter, else from the browser's local storage
(`mlflow.workflowType_v1`), else GenAI; the `mlflow.experimentKind` tag is not read (the bundle's
feature flag for it is hard-wired on; checked in `mlflow/server/js/build`). A fresh browser clicking
an experiment therefore lands on "0 traces". This app (MLflow's `mlflow.app` plugin entry point, the
one basic-auth uses) serves the same UI with one line before its bundle: when the browser has no
choice stored yet, store "machine_learning". A choice the user makes in the UI's switch stays theirs.
"""
from __future__ import annotations

import os

from flask import Response

WORKFLOW_KEY = "mlflow.workflowType_v1"  # the UI's useLocalStorage key: `${key}_v${version}`
DEFAULT_WORKFLOW = "machine_learning"
SCRIPT = ("<script>try{if(localStorage.getItem('%s')===null)localStorage.setItem('%s','\"%s\"')}"
          "catch(e){}</script>" % (WORKFLOW_KEY, WORKFLOW_KEY, DEFAULT_WORKFLOW))


def with_default_workflow(index_html: str) -> str:
    """index.html with the default-choosing script as the first thing in <head>, before the bundle."""
    head = index_html.find("<head>")
    if head < 0:
        return SCRIPT + index_html
    at = head + len("<head>")
    return index_html[:at] + SCRIPT + index_html[at:]


def _flask_app():
    """MLflow's Flask app with its index route serving the edited page."""
    from mlflow.server import app

    index = os.path.join(app.static_folder, "index.html")
    original = app.view_functions["serve"]

    def serve():
        if not os.path.exists(index):
            return original()  # MLflow's own "UI not built" message
        with open(index, encoding="utf-8") as f:
            page = with_default_workflow(f.read())
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    app.view_functions["serve"] = serve
    return app


def create_app():
    """The factory `mlflow server --app-name dla` calls (uvicorn by default: MLflow's FastAPI wrapper
    around the Flask app, as its basic-auth app does; gunicorn and waitress take the Flask app)."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME  # set by `mlflow server` for its workers

    app = _flask_app()
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
