"""What the commands that read runs ask the store (compare, a sweep's summary, reproduce,
the start-up benchmark, promote): an experiment by name, runs by filter, a run, a metric's
history. Each takes the store's URI and returns MLflow's entities as they are."""

from __future__ import annotations

from typing import Any

from mnist.errors import ConfigError
from mnist.tracking import store


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment `name`; ConfigError naming the store's experiments if none."""
    tracker = store.client(uri)
    found = tracker.get_experiment_by_name(name)
    if found is None:
        known = ", ".join(sorted(e.name for e in tracker.search_experiments())) or "none"
        raise ConfigError(
            f"logger.experiment={name!r} names no MLflow experiment in {uri} (known: "
            f"{known}); pass the logger.experiment of the sweep"
        )
    return found.experiment_id


def search_runs(uri: str, experiment: str, filter_string: str) -> list[Any]:
    """Every run of `experiment` (its id) matching `filter_string`, oldest first, page by
    page; ConfigError for a filter MLflow cannot read."""
    from mlflow.exceptions import MlflowException

    tracker = store.client(uri)
    runs: list[Any] = []
    token = None
    while True:
        try:
            page = tracker.search_runs(
                [experiment],
                filter_string,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
        except MlflowException as e:
            raise ConfigError(f"filter={filter_string!r} is not an MLflow filter: {e}") from e
        runs += page
        token = page.token
        if not token:
            return runs


def latest_run(uri: str, experiment: str, filter_string: str) -> Any | None:
    """The most recent run of `experiment` (its id) matching `filter_string`, if any."""
    found = store.client(uri).search_runs(
        [experiment], filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    return found[0] if found else None


def get_run(uri: str, run_id: str) -> Any:
    return store.client(uri).get_run(run_id)


def metric_history(uri: str, run_id: str, name: str) -> list[float]:
    """The values a run logged for metric `name`, step by step."""
    history = store.client(uri).get_metric_history(run_id, name)
    return [metric.value for metric in sorted(history, key=lambda metric: metric.step)]
