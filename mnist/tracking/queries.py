"""What commands read back from a store. Never a logged model itself: the pytorch flavour is a
pickle, and loading it would run whatever it contains."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mnist.errors import ConfigError
from mnist.paths import DEFAULT_MLRUNS
from mnist.tracking import store

# The alias scripts/promote.py points at a sweep's best model: what prediction loads first.
CHAMPION = "champion"
CHECKPOINT_ARTIFACT = "checkpoints/best.pt"
FORMS = "a checkpoint path, runs:/<run id>/model, models:/<name>/<version>, or a run id"


def first_line(error: BaseException | str) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def latest_finished_run(uri: str) -> str:
    """The most recent FINISHED run that has a checkpoint (evaluation runs have none)."""
    tracker = store.client(uri)
    experiments = [e.experiment_id for e in tracker.search_experiments()]
    runs = tracker.search_runs(
        experiments,
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    for run in runs:
        artifacts = tracker.list_artifacts(run.info.run_id, "checkpoints")
        if any(artifact.path == CHECKPOINT_ARTIFACT for artifact in artifacts):
            return run.info.run_id
    raise ConfigError(
        f"no finished run with a {CHECKPOINT_ARTIFACT} in {uri}; train a model first "
        f"(python scripts/train.py) or pass {FORMS}"
    )


def _registered_run(model_uri: str, uri: str) -> str:
    tracker = store.client(uri)
    name, slash, version = model_uri.removeprefix("models:/").partition("/")
    if slash and version.isdigit():
        return tracker.get_model_version(name, version).run_id
    if not slash and "@" in name:
        return tracker.get_model_version_by_alias(*name.split("@", 1)).run_id
    if not slash and name.startswith("m-"):
        return tracker.get_logged_model(name).source_run_id
    raise ConfigError(
        f"{model_uri}: expected models:/<name>/<version>, models:/<name>@<alias> or "
        "models:/<model id>"
    )


def champion_run(uri: str, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return store.client(uri).get_model_version_by_alias(name, CHAMPION).run_id
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None


@contextmanager
def fetched_checkpoint(
    spec: str | None, tracking_uri: str | None, registered_model: str | None
) -> Iterator[tuple[str, str]]:
    """(path, source) of the best.pt of the run `spec` names (None: the champion of
    `registered_model`, else the latest finished run), for the `with` block. A missing
    SQLite file is refused: MLflow would create an empty store."""
    from mlflow.exceptions import MlflowException

    uri = store.tracking_uri(tracking_uri, DEFAULT_MLRUNS)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(
            f"no MLflow store at {uri}; train a model first (python scripts/train.py) or "
            f"pass {FORMS}"
        )
    store.check_store(uri, writes=False)
    try:
        if spec is None:
            champion = registered_model and champion_run(uri, registered_model)
            run_id = champion or latest_finished_run(uri)
        elif spec.startswith("runs:/"):
            run_id = spec.removeprefix("runs:/").split("/", 1)[0]
        elif spec.startswith("models:/"):
            run_id = _registered_run(spec, uri)
        else:
            run_id = spec
        source = f"run {run_id} ({CHECKPOINT_ARTIFACT})"
        if spec is None and champion:
            source = f"models:/{registered_model}@{CHAMPION}, {source}"
        with tempfile.TemporaryDirectory(prefix="mnist-checkpoint-") as tmp:
            yield store.client(uri).download_artifacts(run_id, CHECKPOINT_ARTIFACT, tmp), source
    except (MlflowException, OSError) as e:
        raise ConfigError(
            f"{spec or 'latest finished run'}: cannot fetch its checkpoint from {uri} "
            f"({first_line(e)}); pass {FORMS}"
        ) from e


def run_config(uri: str, run_id: str) -> tuple[Any, str]:
    from mlflow.exceptions import MlflowException

    tracker = store.client(uri)
    try:
        run = tracker.get_run(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            return run, Path(tracker.download_artifacts(run_id, "config.yaml", tmp)).read_text()
    except (MlflowException, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"run_id={run_id}: cannot read the run's config from {uri} ({e})") from e


def experiment_id(uri: str, name: str) -> str:
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
    """Oldest first, up to MLflow's limit of 50,000."""
    from mlflow.exceptions import MlflowException

    oldest_first = ["attributes.start_time ASC"]
    try:
        return store.client(uri).search_runs(
            [experiment], filter_string, max_results=50000, order_by=oldest_first
        )
    except MlflowException as e:
        raise ConfigError(f"filter={filter_string!r} is not an MLflow filter: {e}") from e


def latest_run(uri: str, experiment: str, filter_string: str) -> Any | None:
    found = store.client(uri).search_runs(
        [experiment], filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    return found[0] if found else None


def metric_history(uri: str, run_id: str, name: str) -> list[float]:
    history = store.client(uri).get_metric_history(run_id, name)
    return [metric.value for metric in sorted(history, key=lambda metric: metric.step)]
