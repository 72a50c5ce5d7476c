"""Where the MLflow store is and whether it works: the one place that turns
logger.tracking_uri / $MLFLOW_TRACKING_URI / paths.mlruns into a URI, checks it before
any side effect, and creates experiments. Imports neither torch nor MLflow at module
level, so the sweep callback and the scripts' start-up stay cheap."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mnist.errors import TrackingError

# Runs must not phone home (and machines without internet must not wait on it).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Artifacts read back here are small files: a progress bar each would only clutter the output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri(configured: str | None, mlruns_dir: str | Path) -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else the repository's SQLite store
    (MLflow 3 refuses the plain file store)."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(mlruns_dir).resolve() / 'mlflow.db'}"


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a local SQLite store live next to it, not relative to whatever the
    working directory was; a remote server decides for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / slug).as_uri()


T = TypeVar("T")


def retry_when_locked(call: Callable[[], T], attempts: int = 8, first_wait_s: float = 0.2) -> T:
    """SQLite lets one process write at a time; the others wait up to its busy timeout (5 s),
    which parallel jobs of a sweep on a loaded machine can exceed ("database is locked").
    Each lock is held for one short transaction, so waiting and trying again is enough."""
    for attempt in range(attempts - 1):
        try:
            return call()
        except Exception as e:  # MLflow wraps SQLAlchemy's OperationalError
            if "database is locked" not in str(e):
                raise
            time.sleep(first_wait_s * 2**attempt)
    return call()


def get_or_create_experiment(
    uri: str, name: str, tags: Callable[[str], dict[str, str]] | None = None
) -> str:
    """The id of experiment `name`, created if needed. `tags(experiment_id)`: tags it must
    carry, set where they differ (an experiment made before them gets them too)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=_artifact_location(uri, name))
        except MlflowException:
            # Another job of a sweep created it first.
            if client.get_experiment_by_name(name) is None:
                raise
        experiment = client.get_experiment_by_name(name)
    for key, value in (tags(experiment.experiment_id) if tags else {}).items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def check_store(uri: str) -> None:
    """Fail in a second, before any training, when runs could not be recorded: MLflow
    itself would retry for minutes, or fail only when the first metric is logged."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        existing = next(p for p in (db, *db.parents) if p.exists())
        if existing != db and not existing.is_dir():
            raise TrackingError(
                f"MLflow store {uri} cannot be created: {existing} is a file, not a directory"
            )
        if not os.access(existing, os.W_OK):
            raise TrackingError(
                f"MLflow store {uri} is not writable ({existing}); fix its permissions or "
                "set logger.tracking_uri / MLFLOW_TRACKING_URI to a writable store"
            )
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
                pass
        except (OSError, ValueError) as e:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); "
                "start it (make server) or unset MLFLOW_TRACKING_URI"
            ) from e
