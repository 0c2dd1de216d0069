"""Where MLflow lives: the default store, the store's creation, and the `mlflow server` process the
driver starts for a study when `--mlflow-uri` names a loopback address nobody answers at."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

UI_APP = "dla"  # `mlflow server --app-name dla`: the UI opens experiments on their runs (ui_app.py)


def default_uri(launch_dir: Path) -> str:
    """MLflow's own default store, `sqlite:///mlflow.db`, made absolute (trials may change directory)."""
    return f"sqlite:///{(launch_dir / 'mlflow.db').resolve()}"


def init_store(uri: str) -> None:
    """Creates the tracking store if it does not exist yet (a new SQLite file runs MLflow's schema
    migrations, seconds, once per store): benchmarks call it so that is not counted as logging cost."""
    MlflowClient(tracking_uri=uri).search_experiments()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def ensure_server(uri: str, launch_dir: Path, timeout_s: float = 90.0) -> subprocess.Popen | None:
    """When the tracking URI is a server address on this machine (`http://127.0.0.1:5000`) and
    nothing answers there, start `mlflow server` for the study's lifetime: SQLite store and artifacts
    in the launch folder, artifacts served through the server (so runs logged from anywhere land
    there), bound to that loopback address only; its UI opens experiments on their runs (ui_app). Returns the process to stop, or None."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https") or parsed.hostname not in ("127.0.0.1", "localhost"):
        return None
    port = parsed.port or 80
    if _listening(parsed.hostname, port):
        return None
    log = open(launch_dir / "mlflow-server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", UI_APP,
                             "--host", parsed.hostname, "--port", str(port),
                             "--backend-store-uri", default_uri(launch_dir),
                             "--artifacts-destination", str((launch_dir / "mlartifacts").resolve()),
                             "--serve-artifacts", "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}; see {launch_dir / 'mlflow-server.log'}")
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"mlflow server did not answer at {uri} within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
