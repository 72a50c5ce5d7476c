"""How an experiment opens in the MLflow UI: on its training runs, with the metrics that
compare them as columns, and its charts on the learning curves. MLflow 3's UI (3.17, 3.18)
opens an experiment on the GenAI pages unless the address says
`workflowType=machine_learning`, and it reads no experiment tag for its columns or charts
except a view saved under `mlflow.sharedViewState.<key>` and opened with
`viewStateShareKey=<key>`. So every experiment gets that view, a description that links to
it, and the experiment kind tag that other MLflow 3 releases read; commands print the link."""

from __future__ import annotations

import json
from typing import Any

from mnist.metric_names import OLD_NAMES, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS

# The metrics a comparison needs at first sight, best validation first: what picks a model.
KEY_METRICS = ("best/val_acc", "test/acc", "train_time_s")
# The curves the chart view opens on, per epoch of every job, each quantity's train beside
# its val: how the runs learned.
CURVES = (TRAIN_ACC, VAL_ACC, TRAIN_LOSS, VAL_LOSS)
VIEW_KEY = "training-runs"
# Where `make ui` serves the repository's store (Makefile, PORT).
LOCAL_UI = "http://127.0.0.1:5000"


def _curve(metric: str) -> dict[str, Any]:
    """A line chart of `metric` against the epoch, as the UI stores one (all its fields:
    the UI reads them without defaults); runs stored under its old name draw in it too."""
    old = [name for name, new in OLD_NAMES.items() if new == metric]
    return {
        "uuid": f"curve-{metric}",
        "type": "LINE",
        "metricSectionId": "curves",
        "metricKey": metric,
        "selectedMetricKeys": [metric, *old],
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


def _view() -> dict[str, Any]:
    """The runs table, sorted by validation accuracy, with the model, the key metrics and
    the dataset as columns (the UI's own column keys); the chart view on the curves."""
    columns = [
        "params.`model`",
        *(f"metrics.`{name}`" for name in KEY_METRICS),
        "attributes.`Models`",
        "attributes.`Dataset`",
    ]
    return {
        "selectedColumns": columns,
        "columnOrder": columns,
        "orderByKey": f"metrics.`{KEY_METRICS[0]}`",
        "orderByAsc": False,
        **_charts(),
    }


def runs_path(experiment_id: str) -> str:
    """The address of the experiment's training runs in the view, relative to the UI."""
    query = f"viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
    return f"#/experiments/{experiment_id}/runs?{query}"


def experiment_tags(experiment_id: str) -> dict[str, str]:
    return {
        "mlflow.experimentKind": "custom_model_development",
        f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(_view()),
        "mlflow.note.content": (
            f"Training runs of this repository: each sweep is a parent run (its summary: "
            f"mean ± std per model, the comparison table and chart) with one child run per "
            f"job. [Open the runs sorted by validation accuracy]({runs_path(experiment_id)}), "
            f"with {', '.join(KEY_METRICS)} as columns."
        ),
    }


def how_to_open(uri: str, experiment_id: str) -> str | None:
    """How to see the experiment's runs: `make ui` and the address for the repository's
    store, `mlflow ui` for another SQLite file, the server's own address for an HTTP store;
    None for stores the UI is not known for."""
    from mnist.paths import DEFAULT_MLRUNS

    path = runs_path(experiment_id)
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{path}"
    if not uri.startswith("sqlite:///"):
        return None
    if uri == f"sqlite:///{DEFAULT_MLRUNS.resolve() / 'mlflow.db'}":
        return f"make ui, then open {LOCAL_UI}/{path}"
    return f"mlflow ui --backend-store-uri {uri} --workers 1, then open {LOCAL_UI}/{path}"
