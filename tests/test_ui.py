"""The MLflow UI as a user first sees it: `mlflow ui` on a small store, opened in headless
Chromium (Debian's `chromium`, driven by Playwright) at the address a sweep prints. It must
show the training runs table, named by the swept keys, with the key metrics as columns:
not MLflow 3's GenAI overview."""

import shutil
import subprocess
import sys

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mnist.tracking.store import get_or_create_experiment
from mnist.tracking.ui import KEY_METRICS, experiment_tags, runs_path
from tests.helpers.server import free_port, wait_until_up

CHROMIUM = shutil.which("chromium")
# Without the background services the closed network makes Chromium wait on them.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]  # fmt: skip
RUNS = {"fast seed=0": 0.991, "fast seed=1": 0.989, "linear seed=0": 0.912}


def small_sweep(uri: str) -> str:
    """A sweep as training leaves it: a parent with the swept keys, children named by them."""
    experiment_id = get_or_create_experiment(uri, "sweep", experiment_tags)
    client = MlflowClient(uri)
    parent = client.create_run(experiment_id, run_name="sweep 2026-01-01/12-00-00").info.run_id
    client.log_batch(parent, params=[Param("model", "fast,linear"), Param("seed", "0,1")])
    for name, val_acc in RUNS.items():
        model, seed = name.split(" seed=")
        run = client.create_run(
            experiment_id, run_name=name,
            tags={"mlflow.parentRunId": parent, "model": model, "seed": seed},
        )  # fmt: skip
        metrics = [Metric(key, val_acc, 0, 1) for key in KEY_METRICS]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param("model", model)])
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent)
    return experiment_id


@pytest.mark.slow  # a server and a browser start: a minute or more on a busy 2-core machine
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_experiment_opens_on_its_training_runs(tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = small_sweep(uri)
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "ui.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host",
         "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until_up(url, server, log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 800})
            page.goto(f"{url}/{runs_path(experiment_id)}", timeout=300_000)
            page.get_by_text("fast seed=0", exact=True).first.wait_for(timeout=300_000)
            page.screenshot(path=tmp_path / "runs.png")
            text = page.inner_text("body")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    # The runs table of the "Model training" view, sorted by validation accuracy...
    for name in [*RUNS, *KEY_METRICS]:
        assert name in text, name
    assert text.index("fast seed=0") < text.index("fast seed=1") < text.index("linear seed=0")
    # ...not the GenAI pages a plain link to the experiment opens on.
    for genai in ("Observability", "Judges", "Prompts & versions"):
        assert genai not in text, genai
