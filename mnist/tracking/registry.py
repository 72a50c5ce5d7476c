"""The best model of a sweep, chosen by validation accuracy (never the test set), promoted to
an alias of a registered model, which prediction then defaults to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist.errors import ConfigError
from mnist.tracking import store
from mnist.tracking.queries import CHAMPION, latest_run
from mnist.tracking.runs import MODEL_CONTRACT
from mnist.tracking.store import children
from mnist.tracking.sweep_runs import current_runs, partial_sweep
from mnist.tracking.ui import run_path

SELECTION_METRIC = "best/val_acc"


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    alias: str
    run: Any
    incomplete: str | None = None

    def __str__(self) -> str:
        metrics = self.run.data.metrics
        line = (
            f"models:/{self.name}@{self.alias} -> version {self.version}: run "
            f"{self.run.info.run_name!r} ({self.run.info.run_id}), {SELECTION_METRIC} "
            f"{metrics[SELECTION_METRIC]:.4f}, test/acc {metrics.get('test/acc', float('nan')):.4f}"
        )
        if self.incomplete:
            line += f"\nwarning: {self.incomplete}: the best of those that finished"
        return line


def latest_sweep(uri: str, experiment: str) -> str:
    found = store.client(uri).get_experiment_by_name(experiment)
    parent = found and latest_run(uri, found.experiment_id, "tags.`sweep.dir` LIKE '%'")
    if not parent:
        raise ConfigError(
            f"no sweep in MLflow experiment {experiment!r} of {uri}; run one "
            "(python scripts/train.py -m ...) or pass parent_run_id and logger.experiment"
        )
    return parent.info.run_id


def best_run(uri: str, parent_run_id: str) -> tuple[Any, str | None]:
    """The finished child with a logged model and the best validation accuracy (the earliest
    of equals), and what to say when the sweep is incomplete."""
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException as e:
        raise ConfigError(f"parent_run_id={parent_run_id}: no such run in the store") from e
    finished = "attributes.status = 'FINISHED'"
    runs = children(client, parent.info.experiment_id, parent_run_id, finished)
    candidates = [
        run for run in runs
        if SELECTION_METRIC in run.data.metrics and run.outputs and run.outputs.model_outputs
    ]  # fmt: skip
    if not candidates:
        raise ConfigError(
            f"sweep {parent_run_id} has no finished run with a logged model and "
            f"{SELECTION_METRIC} (logger.log_model=true logs one)"
        )
    best = max(candidates, key=lambda run: run.data.metrics[SELECTION_METRIC])
    return best, partial_sweep(parent, len(current_runs(runs)))


def _description(run: Any) -> str:
    metrics, info = run.data.metrics, run.info
    test = f"{metrics['test/acc']:.2%}" if "test/acc" in metrics else "n/a"
    return (
        f"Validation accuracy {metrics[SELECTION_METRIC]:.2%} ({SELECTION_METRIC}, what chose "
        f"it), test accuracy {test} (test/acc). From run [{info.run_name}]"
        f"({run_path(info.experiment_id, info.run_id)}); train it again and compare: "
        f"`python scripts/reproduce.py run_id={info.run_id}`.\n\n{MODEL_CONTRACT}"
    )


def promote_sweep(
    uri: str, experiment: str, parent_run_id: str | None, name: str, alias: str = CHAMPION
) -> Promotion:
    """Points `name@alias` at the best model of the sweep, registered unless it is already.
    mlflow.register_model, not create_model_version: the logged model's page then shows it."""
    import mlflow

    # Registering models:/<id> reads the logged model through the global store.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = store.client(uri)
    # Promotions at once would each find no version of the run and each register one.
    with store.store_lock(uri):
        run, incomplete = best_run(uri, parent_run_id or latest_sweep(uri, experiment))
        source = f"models:/{run.outputs.model_outputs[-1].model_id}"
        versions = client.search_model_versions(f"name = '{name}'")
        version = next((v for v in versions if v.source == source), None)
        if version is None:
            version = mlflow.register_model(source, name)
        client.update_model_version(name, version.version, _description(run))
        client.set_registered_model_alias(name, alias, version.version)
    return Promotion(name, str(version.version), alias, run, incomplete)
