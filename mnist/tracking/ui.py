"""How what a command made opens in the MLflow UI, and the link it prints to it. MLflow 3's
UI (3.17, 3.18) opens on its GenAI pages unless the address says
`workflowType=machine_learning`, and it reads no experiment tag for its columns or charts
except a view saved under `mlflow.sharedViewState.<key>` and opened with
`viewStateShareKey=<key>`. So every experiment gets a view of its training runs, each sweep
and study one of its own runs (its filter with them), and every link says the workflow.
`make ui` records the address it serves beside the store (Makefile, PORT): the links of
that store point there."""

from __future__ import annotations

import json
import shlex
import urllib.parse
from pathlib import Path
from typing import Any

from mnist.metric_names import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from mnist.tracking.store import NOTE_TAG, children_filter

# The metrics a comparison needs at first sight, best validation first: what picks a model.
KEY_METRICS = ("best/val_acc", "test/acc", "train_time_s")
# The curves the chart view opens on, per epoch of every job, each quantity's train beside
# its val: how the runs learned.
CURVES = (TRAIN_ACC, VAL_ACC, TRAIN_LOSS, VAL_LOSS)
VIEW_KEY = "training-runs"
VIEW_TAG = "mlflow.sharedViewState."
TRAINING_VIEW = "workflowType=machine_learning"
# Written by `make ui` and `make server` beside a SQLite store: the address they serve it at.
ADDRESS_FILE = "ui_address"
# Where `make ui` serves until it has recorded an address (Makefile: PORT's default).
DEFAULT_ADDRESS = "http://127.0.0.1:5000"


def _curve(metric: str) -> dict[str, Any]:
    """A line chart of `metric` against the epoch, as the UI stores one (all its fields:
    the UI reads them without defaults)."""
    return {
        "uuid": f"curve-{metric}",
        "type": "LINE",
        "metricSectionId": "curves",
        "metricKey": metric,
        "selectedMetricKeys": [metric],
        "displayName": metric,
        "isGenerated": False,
        "deleted": False,
        "runsCountToCompare": 10,
        "lineSmoothness": 0,
        "xAxisKey": "step",
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "range": {},
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }


def _charts() -> dict[str, Any]:
    """The chart view opening on the learning curves, in a section of their own first, two
    charts a row: train beside val. The UI adds a chart for every other metric after it;
    `isAccordionReordered` keeps the sections in this order instead of sorting them by
    name."""
    section = {"uuid": "curves", "name": "Learning curves", "display": True, "columns": 2}
    return {
        "compareRunSections": [{**section, "isReordered": True}],
        "compareRunCharts": [_curve(metric) for metric in CURVES],
        "isAccordionReordered": True,
    }


def _view(search_filter: str = "") -> dict[str, Any]:
    """The runs table (those matching `search_filter`, all if empty), sorted by validation
    accuracy, with the model, the key metrics and the dataset as columns (the UI's own
    column keys); the chart view on the curves."""
    columns = [
        "params.`model`",
        *(f"metrics.`{name}`" for name in KEY_METRICS),
        "attributes.`Models`",
        "attributes.`Dataset`",
    ]
    return {
        "searchFilter": search_filter,
        "selectedColumns": columns,
        "columnOrder": columns,
        "orderByKey": f"metrics.`{KEY_METRICS[0]}`",
        "orderByAsc": False,
        **_charts(),
    }


def _runs_path(experiment_id: str, view_key: str) -> str:
    query = f"viewStateShareKey={view_key}&{TRAINING_VIEW}"
    return f"#/experiments/{experiment_id}/runs?{query}"


def runs_path(experiment_id: str) -> str:
    """The address of the experiment's training runs in its view, relative to the UI."""
    return _runs_path(experiment_id, VIEW_KEY)


def run_path(experiment_id: str, run_id: str, tab: str = "") -> str:
    """A run's page (`tab`: "model-metrics" for its charts), relative to the UI."""
    return f"#/experiments/{experiment_id}/runs/{run_id}{f'/{tab}' if tab else ''}?{TRAINING_VIEW}"


def version_path(name: str, version: str) -> str:
    """A registered model version's page, relative to the UI."""
    return f"#/models/{urllib.parse.quote(name, safe='')}/versions/{version}?{TRAINING_VIEW}"


def _children_key(parent_run_id: str) -> str:
    return f"runs-of-{parent_run_id}"


def children_path(experiment_id: str, parent_run_id: str) -> str:
    """The address of a sweep's or a study's own runs, relative to the UI: the view that
    show_children saves."""
    return _runs_path(experiment_id, _children_key(parent_run_id))


def show_children(client: Any, experiment_id: str, parent_run_id: str) -> str:
    """Saves the view of a sweep's or a study's own runs (the experiment's training runs
    also hold single runs and other sweeps) and returns its address, relative to the UI."""
    view = json.dumps(_view(children_filter(parent_run_id)))
    client.set_experiment_tag(experiment_id, f"{VIEW_TAG}{_children_key(parent_run_id)}", view)
    return children_path(experiment_id, parent_run_id)


def experiment_tags(experiment_id: str) -> dict[str, str]:
    return {
        "mlflow.experimentKind": "custom_model_development",
        f"{VIEW_TAG}{VIEW_KEY}": json.dumps(_view()),
        NOTE_TAG: (
            f"Training runs of this repository: each sweep is a parent run (its summary: "
            f"mean ± std per model, the comparison table and chart) with one child run per "
            f"job. [Open the runs sorted by validation accuracy]({runs_path(experiment_id)}), "
            f"with {', '.join(KEY_METRICS)} as columns."
        ),
    }


def _recorded_address(db: Path) -> str:
    """The address `make ui` last served the store `db` at, else its default."""
    try:
        address = (db.parent / ADDRESS_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return DEFAULT_ADDRESS
    return address if address.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def how_to_open(uri: str, path: str) -> str | None:
    """How to see `path` (runs_path, run_path, ...) of the store `uri`: the server's own
    address for an HTTP store; for a SQLite store, `make ui` (STORE=<its directory>
    unless it is the repository's, PORT= as it last served it) and that address; None for
    stores the UI is not known for."""
    from mnist.paths import DEFAULT_MLRUNS

    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{path}"
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    if db.name != "mlflow.db":  # make ui serves <STORE>/mlflow.db only
        return (
            f"mlflow ui --backend-store-uri {uri} --workers 1, then open {DEFAULT_ADDRESS}/{path}"
        )
    address = _recorded_address(db)
    store = "" if db.parent == DEFAULT_MLRUNS.resolve() else f" STORE={shlex.quote(str(db.parent))}"
    served_on = urllib.parse.urlsplit(address).port
    port = f" PORT={served_on}" if served_on and address != DEFAULT_ADDRESS else ""
    return f"make ui{store}{port}, then open {address}/{path}"
