"""How what a command made opens in the MLflow UI. MLflow 3's UI opens on its GenAI pages
unless the address says `workflowType=machine_learning`, and reads columns and charts only
from a view saved as the tag `mlflow.sharedViewState.<key>`, opened by `viewStateShareKey`."""

from __future__ import annotations

import json
import shlex
import urllib.parse
from pathlib import Path
from typing import Any

from mnist.metric_names import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from mnist.tracking.store import NOTE_TAG, children_filter

# What picks a model, best validation first.
KEY_METRICS = ("best/val_acc", "test/acc", "train_time_s")
# The curves the chart view opens on, each train beside its val.
CURVES = (TRAIN_ACC, VAL_ACC, TRAIN_LOSS, VAL_LOSS)
VIEW_KEY = "training-runs"
VIEW_TAG = "mlflow.sharedViewState."
TRAINING_VIEW = "workflowType=machine_learning"
# Written by `make ui` and `make server` beside a SQLite store: the address they serve.
ADDRESS_FILE = "ui_address"
DEFAULT_ADDRESS = "http://127.0.0.1:5000"


def _curve(metric: str) -> dict[str, Any]:
    """Every field given: the UI reads none as default."""
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


def _view(search_filter: str = "") -> dict[str, Any]:
    """`isAccordionReordered` keeps the sections in this order, not sorted by name."""
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
        "compareRunSections": [
            {
                "uuid": "curves",
                "name": "Learning curves",
                "display": True,
                "columns": 2,
                "isReordered": True,
            }
        ],
        "compareRunCharts": [_curve(metric) for metric in CURVES],
        "isAccordionReordered": True,
    }


def runs_path(experiment_id: str, view_key: str = VIEW_KEY) -> str:
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={view_key}&{TRAINING_VIEW}"


def run_path(experiment_id: str, run_id: str, tab: str = "") -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}{f'/{tab}' if tab else ''}?{TRAINING_VIEW}"


def version_path(name: str, version: str) -> str:
    return f"#/models/{urllib.parse.quote(name, safe='')}/versions/{version}?{TRAINING_VIEW}"


def children_path(experiment_id: str, parent_run_id: str) -> str:
    return runs_path(experiment_id, f"runs-of-{parent_run_id}")


def show_children(client: Any, experiment_id: str, parent_run_id: str) -> str:
    view = json.dumps(_view(children_filter(parent_run_id)))
    client.set_experiment_tag(experiment_id, f"{VIEW_TAG}runs-of-{parent_run_id}", view)
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


def how_to_open(uri: str, path: str) -> str | None:
    """The server's address, or for a SQLite store the `make ui` command (STORE=, PORT= as it
    last served it) and its address."""
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
    try:
        address = (db.parent / ADDRESS_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        address = ""
    if not address.startswith(("http://", "https://")):
        address = DEFAULT_ADDRESS
    store = "" if db.parent == DEFAULT_MLRUNS.resolve() else f" STORE={shlex.quote(str(db.parent))}"
    served_on = urllib.parse.urlsplit(address).port
    port = f" PORT={served_on}" if served_on and address != DEFAULT_ADDRESS else ""
    return f"make ui{store}{port}, then open {address}/{path}"
