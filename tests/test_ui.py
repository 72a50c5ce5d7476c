"""The MLflow UI as a user meets it: `make ui` on a store, every command printing the link
to what it made, and each link opened in headless Chromium (Debian's `chromium`, driven
by Playwright): MLflow's training view (not its GenAI pages) of a single run opening on
its learning curves, of a sweep's own runs best first, of the comparison and of the
champion's version, each page saying what it holds."""

import os
import re
import runpy
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
from mlflow.tracking import MlflowClient

from mnist.context import JobContext
from mnist.job import run_training
from mnist.metric_names import TRAIN_ACC, VAL_ACC
from mnist.paths import DEFAULT_MLRUNS
from mnist.reporting.compare import compare
from mnist.tracking import ui
from tests.helpers import REPO_ROOT, compose_config, run_train_script, tiny_overrides
from tests.helpers.compare import compare_config
from tests.helpers.server import (
    assert_no_job_runner_and_address_recorded,
    free_port,
    start_make_server,
    stop_server,
)

CHROMIUM = shutil.which("chromium")


# Without the background services the closed network makes Chromium wait on them.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]  # fmt: skip
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
# Where the test leaves its pictures (the docs' screenshots come from here: of runs on 2,000
# real digits, which show the numbers real runs give), else tmp_path.
SCREENSHOTS = os.environ.get("MNIST_UI_SCREENSHOTS")
# What only MLflow's GenAI pages show (their side menu): a link must not land there.
GENAI = ("Observability", "Judges", "Prompts & versions")
LINK = re.compile(r"then open (http://\S+)")
# The pages docs/tracking.md shows.
PICTURES = ("run", "runs", "charts", "compare", "champion")


def test_links_say_the_training_view_and_where_make_ui_serves_the_store(tmp_path):
    """A SQLite store's link names `make ui` with its STORE (and PORT, as `make ui` last
    recorded it beside the store); a server's link is the server's own address."""
    path = ui.run_path("1", "abc", "model-metrics")
    assert path == "#/experiments/1/runs/abc/model-metrics?workflowType=machine_learning"
    for other in (ui.runs_path("1"), ui.children_path("1", "p"), ui.version_path("m n", "2")):
        assert other.endswith("?workflowType=machine_learning") or "&workflowType=" in other
    assert ui.version_path("m n", "2").startswith("#/models/m%20n/versions/2?")

    repository = f"sqlite:///{DEFAULT_MLRUNS.resolve() / 'mlflow.db'}"
    assert re.fullmatch(rf"make ui( PORT=\d+)?, then open http://\S+/{re.escape(path)}",
                        ui.how_to_open(repository, path))  # fmt: skip
    store = tmp_path / "my store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    address = ui.DEFAULT_ADDRESS
    assert ui.how_to_open(uri, path) == f"make ui STORE='{store}', then open {address}/{path}"
    store.mkdir()
    (store / ui.ADDRESS_FILE).write_text("http://127.0.0.1:5055\n")  # make ui PORT=5055
    assert ui.how_to_open(uri, path) == (
        f"make ui STORE='{store}' PORT=5055, then open http://127.0.0.1:5055/{path}"
    )
    assert ui.how_to_open("http://tracking:5000/", path) == f"open http://tracking:5000/{path}"
    assert ui.how_to_open("postgresql://db/mlflow", path) is None


def test_make_ui_serves_by_default_where_links_point_before_it_records_an_address(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "STORE")}
    dry_run = subprocess.run(["make", "-s", "-n", "ui", f"STORE={tmp_path}"], cwd=REPO_ROOT,
                             env=env, capture_output=True, text=True, check=True)  # fmt: skip
    port = ui.DEFAULT_ADDRESS.rsplit(":", 1)[1]
    assert f"echo {ui.DEFAULT_ADDRESS} > '{tmp_path}/{ui.ADDRESS_FILE}'" in dry_run.stdout
    assert f"--port {port}" in dry_run.stdout


def printed_link(text: str, before: str) -> str:
    """The URL of the line of `text` that starts with `before` (after the log prefix)."""
    line = next(line for line in text.splitlines() if before in line)
    return LINK.search(line).group(1)


class Served(NamedTuple):
    """A `make ui` or `make server` that is up: its URL, store and process group."""

    url: str
    store: Path
    group: int


@pytest.fixture(scope="module")
def make_ui(tmp_path_factory, empty_mlflow_db):
    """`make ui` serving a store of its own (a copy of an initialised one), for the tests
    of what it serves and of how it runs: one server start for both."""
    store = tmp_path_factory.mktemp("make-ui-store")
    shutil.copy(empty_mlflow_db, store / "mlflow.db")
    with made("ui", store) as served:
        yield served


@contextmanager
def made(target: str, store: Path) -> Iterator[Served]:
    """`make <target>` (ui or server) on `store`, up until the block ends."""
    port = free_port()
    make = start_make_server(target, store, port)
    try:
        yield Served(f"http://127.0.0.1:{port}", store, make.pid)
    finally:
        stop_server(make)


@pytest.mark.slow  # a sweep, a promotion, a server and a browser: minutes on a busy 2-core machine
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_every_command_links_a_page_of_mlflows_training_view_that_says_what_it_made(
    tiny_cfg, synthetic_root, tmp_path, caplog, capsys, request, make_ui
):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    shots = SCREENSHOTS or tmp_path
    digits = synthetic_root
    if SCREENSHOTS:
        digits = request.getfixturevalue("mnist_root")
    url, store, _ = make_ui
    links = made_with_links(tiny_cfg, digits, tmp_path, store, caplog, capsys)
    assert all(link.startswith(f"{url}/#/") for link in links.values()), links
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        text = {name: shown(page, link, name, shots) for name, link in pages(links).items()}
        browser.close()
    for name, body in text.items():
        for genai in GENAI:
            assert genai not in body, (name, genai)
    check_run_page(text["run"])
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    parent = re.search(r"runs-of-(\w+)", links["runs"]).group(1)
    jobs = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    check_sweep(jobs, text["runs"], text["charts"])
    champion = client.get_run(client.get_model_version_by_alias("mnist", "champion").run_id)
    check_descriptions(text, client.get_run(parent).info.run_name, champion)


def made_with_links(
    tiny_cfg, digits: Path, tmp_path, store: Path, caplog, capsys
) -> dict[str, str]:
    """A single run, a sweep of two models, their comparison and the champion, each made as
    its command makes it in `store`, on `digits` (2,000 of them); {what: the link it printed}."""
    caplog.set_level("INFO")
    data = [f"data.root={digits}", "data.train_subset=2000", f"paths.mlruns={store}"]
    overrides = ["optimizer.lr=0.02"]  # what the single run is named by, after its model
    ctx = JobContext(tmp_path / "single", overrides=overrides, choices={"model": "fast"})
    run_training(tiny_cfg(*data, *overrides), ctx)
    single = printed_link(caplog.text, "Its learning curves: ")

    tiny = [*tiny_overrides(digits, tmp_path), f"paths.mlruns={store}", "logger.log_model=true"]
    sweep = run_train_script("-m", *tiny, "data.train_subset=2000", "model=fast,linear")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    runs = printed_link(sweep.stdout, "Compare the runs: ")

    caplog.clear()
    compare(
        compare_config(tmp_path, f"paths.mlruns={store}", experiment="mnist"), tmp_path / "compare"
    )
    comparison = printed_link(caplog.text, "See the comparison: ")
    # scripts/promote.py's main on its composed config, in-process (the script itself runs
    # in tests/test_recipes.py).
    promote = runpy.run_path(str(REPO_ROOT / "scripts" / "promote.py"))["main"]
    capsys.readouterr()
    promote(compose_config([f"paths.mlruns={store}"], config_name="promote"))
    champion = printed_link(capsys.readouterr().out, "See it: ")
    return {"run": single, "runs": runs, "compare": comparison, "champion": champion}


def pages(links: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{name: (address, text that shows the page is drawn)}: the printed links, the sweep's
    chart view and its parent run's page."""
    parent = re.search(r"runs-of-(\w+)", links["runs"]).group(1)
    experiment = re.search(r"experiments/(\d+)/", links["runs"]).group(1)
    base = links["runs"].split("/#/")[0]
    return {
        "run": (links["run"], "avg_loss"),
        "runs": (links["runs"], "linear"),
        "charts": (f"{links['runs']}&compareRunsMode=CHART", "Learning curves"),
        "sweep": (f"{base}/{ui.run_path(experiment, parent)}", "Winner"),
        "compare": (links["compare"], "Winner"),
        "champion": (links["champion"], "Validation accuracy"),
    }


def shown(page, link: tuple[str, str], name: str, shots) -> str:
    """The page's text once drawn, and its picture as mlflow_<name>.png (PICTURES)."""
    address, drawn = link
    page.goto(address, timeout=300_000)
    page.get_by_text(drawn).first.wait_for(timeout=300_000)
    if name in ("run", "charts"):  # the curves drawn by Plotly, not their spinners
        page.locator(".scatterlayer .trace").nth(1).wait_for(timeout=300_000)
    assistant = page.locator(ASSISTANT_CLOSE)
    if assistant.count():  # room for the page in the picture
        assistant.click()
    text = page.inner_text("body")
    more = page.get_by_text("Show more", exact=True)
    if more.count():  # the picture shows what a click shows: the description's table
        more.first.click()
    if name in PICTURES:
        page.screenshot(path=f"{shots}/mlflow_{name}.png")
    return text


def check_run_page(run: str) -> None:
    """Named by its model, then what it overrides; its page opens on the learning curves,
    train beside val, before the sections of single values."""
    assert "fast optimizer.lr=0.02" in run
    sections = [run.index(f"\n{name}\n(") for name in ("acc", "avg_loss", "best", "test", "time")]
    assert sections == sorted(sections), sections
    curves = run[sections[0] : sections[2]]
    for quantity in ("acc", "avg_loss"):
        section = curves[curves.index(f"{quantity}\n(") :]
        assert section.index("train") < section.index("val"), quantity


def check_sweep(jobs: list, runs: str, charts: str) -> None:
    """The sweep's link: its runs alone (not the single run), best validation first (the
    run names come before the other columns), the key metrics as columns; its chart view
    opens on the curves."""
    assert sorted(job.info.run_name for job in jobs) == ["fast", "linear"]
    shown = sorted(jobs, key=lambda job: runs.index(f"\n{job.info.run_name}\n"))
    accuracies = [job.data.metrics["best/val_acc"] for job in shown]
    assert accuracies == sorted(accuracies, reverse=True)
    assert "fast optimizer.lr=0.02" not in runs
    for column in ui.KEY_METRICS:
        assert column in runs, column
    first = charts.index("Learning curves")
    assert first < charts.index(TRAIN_ACC, first) < charts.index(VAL_ACC, first)
    assert charts.index(ui.CURVES[-1], first) < charts.index("Model metrics", first)


def check_descriptions(text: dict[str, str], sweep: str, best) -> None:
    """The sweep and the comparison open with the winner (one run per model: the model of
    the best run, the champion), the comparison names the sweep; the champion's version
    says how good it is, its run and how to train it again."""
    for name in ("sweep", "compare"):
        winner = f"Winner: {best.data.tags['model']}"
        assert text[name].index(winner) < text[name].index("Show more"), name
    assert sweep in text["compare"]
    metrics = best.data.metrics
    assert f"Validation accuracy {metrics['best/val_acc']:.2%}" in text["champion"]
    assert f"test accuracy {metrics['test/acc']:.2%}" in text["champion"]
    assert f"reproduce.py run_id={best.info.run_id}" in text["champion"]
    assert best.info.run_name in text["champion"]


@pytest.mark.slow
def test_make_ui_starts_no_job_runner_and_records_its_address(make_ui):
    """(assert_no_job_runner_and_address_recorded says why.) `make server`: in
    tests/test_store.py's server killed mid-run, which starts its server so."""
    assert_no_job_runner_and_address_recorded(*make_ui)
