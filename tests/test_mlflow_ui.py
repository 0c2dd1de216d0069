"""The MLflow UI shows a study at a glance: a real small study (run.py in a subprocess, as a user runs
it), served by `mlflow server`, opened in headless Chromium through Playwright.

Screenshots of every page go to the test's tmp_path (`experiment.png`, `parent.png`, `compare.png`,
`charts.png`): look at them when the UI changes. Skipped without Playwright or a Chromium
(`DLA_CHROMIUM`, default /usr/bin/chromium); Playwright's own browser download is not used.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("DLA_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WAIT_MS = 90_000  # a cold UI on a loaded 2-core machine takes tens of seconds to render a page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; a system Chromium is used)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set DLA_CHROMIUM)")
    return sync_playwright


@pytest.fixture(scope="module")
def served(sync_playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A 3-trial residual-mlp study logged to SQLite by run.py, and `mlflow server --app-name dla` on it
(loopback), as the README tells users to open it."""
    folder = tmp_path_factory.mktemp("ui-study")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    study = subprocess.run([sys.executable, str(REPO / "orchestrator" / "run.py"), "lab1", "--study", "residual-mlp",
                            "--num-samples", "3", "--set", "epochs=2", "--quiet", "--ray-address", "local",
                            "--mlflow-uri", uri, "--storage", str(folder / "ray_results"),
                            "--report-dir", str(folder / "reports")],
                           cwd=folder, capture_output=True, text=True, timeout=900)
    assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("lab1")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: r.data.metrics["study_rank"])
    port = _free_port()
    log = open(folder / "mlflow-ui.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "dla", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", uri, "--workers", "1"], cwd=folder, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)  # its uvicorn worker too
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (folder / "mlflow-ui.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not answer"
                time.sleep(1)
        yield {"base": base, "experiment_id": exp.experiment_id, "parent": parent, "children": children,
               "stdout": study.stdout}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn process it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser(sync_playwright: Any, served: dict[str, Any]) -> Iterator[Any]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def _new_page(browser: Any) -> Any:
    """A page in a fresh browser profile: nothing remembered (no GenAI / Model training choice yet)."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(WAIT_MS)
    return page


@pytest.fixture(scope="module")
def page(browser: Any) -> Any:
    return _new_page(browser)


def _open(page: Any, url: str, ready: str) -> None:
    """Opens url and waits until `ready` is shown; closes the UI's assistant panel if it is open (it
    takes a third of the width; the browser remembers it closed)."""
    page.goto(url)
    page.get_by_text(ready, exact=False).first.wait_for(state="visible")
    close = page.locator("button[aria-label='Close']")
    for i in range(close.count()):
        try:
            close.nth(i).click(timeout=2000)
        except Exception:  # not every Close button is the assistant's
            pass
    time.sleep(1.5)  # charts and tables finish rendering


def _expand(page: Any) -> None:
    """Shows the whole description (the UI folds a long one under "Show more")."""
    more = page.get_by_text("Show more", exact=True)
    if more.count():
        more.first.click()
        time.sleep(1)


def _shot(page: Any, path: Path) -> str:
    page.screenshot(path=str(path), full_page=True)
    return page.inner_text("body")


def _names(served: dict[str, Any]) -> list[str]:
    return [c.info.run_name for c in served["children"]]


def test_a_new_browser_clicking_the_experiment_lands_on_its_runs(browser, served, tmp_path):
    """As a new user: the experiments list, click `lab1` (a link without workflowType). MLflow 3.17's
    UI would open its GenAI side ("0 traces"); `--app-name dla` makes Model training the default."""
    page = _new_page(browser)
    _open(page, f"{served['base']}/#/experiments", "lab1")
    page.get_by_text("lab1", exact=True).first.click()
    page.get_by_text("residual-mlp [quick]", exact=False).first.wait_for(state="visible")  # the parent run's row
    _shot(page, tmp_path / "experiment-clicked.png")
    assert f"/experiments/{served['experiment_id']}/runs" in page.url and "workflowType=machine_learning" in page.url
    assert "0 traces" not in page.inner_text("body")
    # A choice the user made in the UI's switch stays theirs: the default is written only when none is stored.
    page.evaluate("localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('genai'))")
    again = page.context.new_page()  # the same browser profile, the UI loaded anew
    again.set_default_timeout(WAIT_MS)
    again.goto(f"{served['base']}/#/experiments/{served['experiment_id']}")
    again.wait_for_url("**workflowType=genai**")
    page.context.close()


def test_the_experiment_opens_on_its_trials_named_and_ranked_with_their_results(page, served, tmp_path):
    exp, parent = served["experiment_id"], served["parent"].info.run_id
    names = _names(served)
    # Children are named by what they tried (no Ray trial ids), and uniquely.
    assert len(set(names)) == 3 and all(n.startswith("depth=") and " lr=" in n for n in names), names
    assert all(c.info.run_name != c.data.tags["trial_id"] for c in served["children"])
    # The experiment is marked as model training; the printed links open its runs, not GenAI traces.
    _open(page, f"{served['base']}/#/experiments/{exp}?workflowType=machine_learning", "residual-mlp [quick]")
    assert f"/experiments/{exp}/runs" in page.url, page.url  # the GenAI side redirects to /overview or /traces
    # The saved view of the invocation: its trials, ranked (best first), params and results as columns.
    _open(page, f"{served['base']}/#/experiments/{exp}/runs?viewStateShareKey={parent}&workflowType=machine_learning",
          names[0])
    text = _shot(page, tmp_path / "experiment.png")
    for column in ("best_val_acc", "best_val_acc_epoch", "test_acc", "study_rank", "depth", "lr", "residual"):
        assert column in text, column
    # The table's order is the study's ranking (the grid's DOM order is not its display order).
    shown = [" ".join(page.locator(f'.ag-row[row-index="{i}"]').all_inner_texts()) for i in range(3)]
    assert all(name in row for name, row in zip(names, shown)), (shown, names)
    # Charts of the same view: the best run is among the runs drawn, its best_val_acc chart first.
    _open(page, page.url + "&compareRunsMode=CHART", "best_val_acc")
    page.locator(".js-plotly-plot").nth(2).wait_for(state="visible")  # the first row of charts is drawn
    time.sleep(2)
    text = _shot(page, tmp_path / "charts.png")
    assert names[0] in text and text.index("best_val_acc") < text.index("val_loss")
    assert "grad_norm/" not in text and "weights_digest" not in text


def test_the_parent_run_describes_the_study_and_links_its_trials(page, served, tmp_path):
    exp, parent = served["experiment_id"], served["parent"]
    names, children = _names(served), served["children"]
    _open(page, f"{served['base']}/#/experiments/{exp}/runs/{parent.info.run_id}?workflowType=machine_learning",
          "Do residual connections keep deep MLPs trainable?")
    _expand(page)
    text = _shot(page, tmp_path / "parent.png")
    assert f"Best of 3 trials: {names[0]}" in text
    for part in ("Target.", "max val_acc at each trial's best epoch", "Search space.", "depth {1, 2, 4, 8, 16, 32}",
                 "residual {False, True}", "lr [0.0003, 0.003] log", "best val_acc", "test_acc"):
        assert part in text, part
    # The comparison table links each row to its child run; the child runs list names them.
    links = page.locator(".note-editor-preview-content a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert any(children[0].info.run_id in h for h in hrefs), hrefs
    assert sum(1 for n in names if text.count(n) >= 2) == 3  # in the table and in "Child runs"
    best = parent.data.tags
    assert best["best_run_id"] == children[0].info.run_id and best["best_run_name"] == names[0]
    # The report names the same best run, by the name and full id the UI shows.
    html = next(line for line in served["stdout"].splitlines() if line.startswith("report: "))
    report = (Path(html.split("report: ", 1)[1].strip()).parent / "report.md").read_text()
    assert f"| 1 | {names[0]} |" in report and f"`{children[0].info.run_id}`" in report


def test_two_children_side_by_side_on_the_compare_page(page, served, tmp_path):
    exp, parent = served["experiment_id"], served["parent"]
    names = _names(served)
    _open(page, f"{served['base']}/#/experiments/{exp}/runs/{parent.info.run_id}?workflowType=machine_learning",
          "compare the two best")
    _expand(page)
    with page.context.expect_page() as opened:  # the UI opens a description's links in a new tab
        page.get_by_text("compare the two best", exact=True).first.click()
    compare = opened.value
    compare.set_default_timeout(WAIT_MS)
    compare.set_viewport_size({"width": 1400, "height": 900})
    compare.get_by_text("Comparing 2 Runs", exact=False).first.wait_for(state="visible")
    time.sleep(3)
    text = _shot(compare, tmp_path / "compare.png")
    compare.close()
    assert names[0] in text and names[1] in text and names[2] not in text
    metrics = text[text.index("Metrics"):]
    for name in ("best_val_acc", "best_val_acc_epoch", "final_val_acc", "test_acc", "train_grad_norm_ratio",
                 "train_lr_end"):
        assert name in metrics, name
    assert "grad_norm/00" not in text and "world_size" not in metrics.split("Tags")[0]
    # The parallel coordinates plot starts on the target (the first metric a run logged).
    plot = text[text.index("Metrics:"):text.index("Clear All")]
    assert "best_val_acc" in plot, plot
