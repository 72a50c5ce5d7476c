"""The MLflow UI as a user first sees it: `mlflow ui` on a small store, opened in headless
Chromium (Debian's `chromium`, driven by Playwright) at the address a sweep prints. It must
show the training runs table, named by the swept keys, best validation first, not MLflow
3's GenAI overview; its chart view must open on the learning curves; the champion's logged
model must show its registered version."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param
from mlflow.tracking import MlflowClient

from mnist.metric_names import TRAIN_LOSS, VAL_ACC
from mnist.tracking.registry import promote_sweep
from mnist.tracking.store import get_or_create_experiment
from mnist.tracking.ui import CURVES, KEY_METRICS, experiment_tags, runs_path
from tests.helpers import REPO_ROOT
from tests.helpers.server import free_port, wait_until_up

CHROMIUM = shutil.which("chromium")
# Without the background services the closed network makes Chromium wait on them.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]  # fmt: skip
# Illustrative numbers of the size real runs give: best val acc, test acc, training seconds.
RUNS = {
    "fast seed=0": (0.9912, 0.9907, 12.4),
    "fast seed=1": (0.9894, 0.9901, 12.9),
    "linear seed=0": (0.9120, 0.9147, 3.1),
}
EPOCHS = 3
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
# Where the test leaves its pictures (the docs' screenshots come from here), else tmp_path.
SCREENSHOTS = os.environ.get("MNIST_UI_SCREENSHOTS")


def small_sweep(uri: str) -> tuple[str, str]:
    """A sweep as training leaves it: a parent with the swept keys and summary metrics,
    children named by them with curves per epoch, final metrics and a logged model.
    Returns the experiment and parent run ids."""
    experiment_id = get_or_create_experiment(uri, "sweep", experiment_tags)
    client = MlflowClient(uri)
    parent = client.create_run(
        experiment_id, run_name="sweep 2026-01-01/12-00-00", tags={"sweep.dir": "sweep"}
    ).info.run_id
    client.log_batch(parent, params=[Param("model", "fast,linear"), Param("seed", "0,1")],
                     metrics=[Metric("summary/fast/best/val_acc_mean", 0.9903, 0, 0)])  # fmt: skip
    for name, (val_acc, test_acc, seconds) in RUNS.items():
        model, seed = name.split(" seed=")
        run = client.create_run(
            experiment_id, run_name=name,
            tags={"mlflow.parentRunId": parent, "model": model, "seed": seed},
        ).info.run_id  # fmt: skip
        curves = [
            Metric(key, value, 0, epoch)
            for epoch in range(1, EPOCHS + 1)
            for key, value in (
                (VAL_ACC, val_acc - (1 - val_acc) * (EPOCHS - epoch) / epoch),
                (TRAIN_LOSS, 3 * (1 - val_acc) + 0.3 / epoch),
            )
        ]
        values = {"best/val_acc": val_acc, "test/acc": test_acc, "train_time_s": seconds}
        final = [Metric(key, values[key], 0, EPOCHS) for key in KEY_METRICS]
        final.append(Metric("best/epoch", EPOCHS, 0, EPOCHS))
        client.log_batch(run, metrics=curves + final, params=[Param("model", model)])
        logged = client.create_logged_model(experiment_id, name=model, source_run_id=run)
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        client.log_outputs(run, [LoggedModelOutput(logged.model_id, step=EPOCHS)])
        client.set_terminated(run)
    client.set_terminated(parent)
    return experiment_id, parent


@pytest.mark.slow  # a server and a browser start: a minute or more on a busy 2-core machine
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_a_newcomer_sees_the_runs_best_first_the_curves_and_the_registered_champion(tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    shots = SCREENSHOTS or tmp_path
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id, parent = small_sweep(uri)
    champion = promote_sweep(uri, "sweep", parent, "mnist").run
    model_id = champion.outputs.model_outputs[-1].model_id
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "ui.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host",
         "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    text = {}
    try:
        wait_until_up(url, server, log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            pages = {
                "runs": (runs_path(experiment_id), "fast seed=0"),
                "charts": (
                    f"{runs_path(experiment_id)}&compareRunsMode=CHART",
                    f"linear seed=0 ({CURVES[-1]})",  # the legend: the plot is drawn
                ),
                "champion": (f"#/experiments/{experiment_id}/models/{model_id}", "mnist"),
            }
            for name, (path, shown) in pages.items():
                page.goto(f"{url}/{path}", timeout=300_000)
                page.get_by_text(shown, exact=True).first.wait_for(timeout=300_000)
                if name == "charts":  # both curves drawn by Plotly, not their spinners
                    page.locator(".scatterlayer .trace").nth(1).wait_for(timeout=300_000)
                assistant = page.locator(ASSISTANT_CLOSE)
                if assistant.count():  # room for the page in the picture
                    assistant.click()
                page.screenshot(path=f"{shots}/mlflow_{name}.png")
                text[name] = page.inner_text("body")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    runs, charts, model = text["runs"], text["charts"], text["champion"]
    # The runs table of the "Model training" view, sorted by validation accuracy...
    for name in [*RUNS, *KEY_METRICS]:
        assert name in runs, name
    assert runs.index("fast seed=0") < runs.index("fast seed=1") < runs.index("linear seed=0")
    # ...not the GenAI pages a plain link to the experiment opens on.
    for genai in ("Observability", "Judges", "Prompts & versions"):
        assert genai not in runs, genai
    # The chart view opens on the curves, before the sections of single values that the UI
    # makes of the other metrics (best/, test/, the parent's summary).
    first = charts.index("Learning curves")
    assert first < charts.index(CURVES[0], first) < charts.index(CURVES[1], first)
    for section in ("best\n", "Model metrics", "summary"):
        assert charts.index(CURVES[1], first) < charts.index(section, first), section
    # The champion's logged model shows its registered version.
    assert "Not registered" not in model
    assert "Model versions\nmnist\nv1" in model, model


@pytest.mark.slow
@pytest.mark.parametrize("target", ["ui", "server"])
def test_make_ui_and_server_start_no_job_runner(tmp_path, target):
    """MLflow 3.17 starts a job runner beside its server (10 processes, 2.1 GB in all); it
    hands the server the runner's storage before the server starts, so its absence is
    known as soon as the server answers."""
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "make.log"
    make = subprocess.Popen(
        ["make", "-s", target, f"PORT={port}", f"STORE={tmp_path}"],
        cwd=REPO_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_up(url, make, log)
        group = [p for p in Path("/proc").glob("[0-9]*") if _group_of(p) == make.pid]
        environments = [(p / "environ").read_bytes() for p in group if p.exists()]
        assert environments and not [e for e in environments if b"_MLFLOW_HUEY_STORAGE" in e]
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=60)


def _group_of(process: Path) -> int | None:
    try:
        return os.getpgid(int(process.name))
    except ProcessLookupError:
        return None
