"""Everything MLflow: where the store is, the run lifecycle, and what identifies a run
(git state, versions, host). MLflow is imported inside the functions because importing it
costs seconds that commands which never track should not pay."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from mnist.config import REPO_ROOT

# Runs must not phone home (and machines without internet must not wait on it).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


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


def _end_run(status: str) -> None:
    """mlflow.end_run forgets the active run before it writes the status, so retrying it
    could leave the run RUNNING: write the status first, retried, then end the run."""
    import mlflow

    run_id = mlflow.active_run().info.run_id
    retry_when_locked(lambda: mlflow.MlflowClient().set_terminated(run_id, status))
    retry_when_locked(lambda: mlflow.end_run(status))


def get_or_create_experiment(uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    except MlflowException:
        # Another job of a sweep created it first.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _package_version(name: str) -> str:
    # Read from package metadata: importing torchvision just for its version takes seconds.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_state() -> tuple[str, str]:
    """(commit, "true"/"false"/"unknown" for uncommitted changes) of the repository."""
    status = _git("status", "--porcelain")
    dirty = "unknown" if status is None else str(bool(status)).lower()
    return _git("rev-parse", "HEAD") or "unknown", dirty


def run_tags(seed: int, device: torch.device, overrides: list[str], model: str) -> dict[str, str]:
    """What it takes to trace a run back to its code and machine."""
    commit, dirty = git_state()
    return {
        "git.commit": commit,
        "git.dirty": dirty,
        "hydra.overrides": " ".join(overrides),
        "model": model,
        "seed": str(seed),
        "device": str(device),
        "device.name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch.version": torch.__version__,
        "torchvision.version": _package_version("torchvision"),
        "cuda.version": torch.version.cuda or "none",
        "hostname": socket.gethostname(),
    }


@contextmanager
def mlflow_run(
    uri: str,
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    resume_run_id: str | None = None,
) -> Iterator[Any]:
    """An active MLflow run that always ends: FINISHED, KILLED on Ctrl-C, FAILED on any
    other exception (re-raised), so a crashed job never leaves a run RUNNING. With
    `resume_run_id`, the interrupted run is continued instead (its params stay as logged)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    if resume_run_id:
        run = retry_when_locked(lambda: mlflow.start_run(run_id=resume_run_id))
    else:
        experiment_id = retry_when_locked(lambda: get_or_create_experiment(uri, experiment))
        run = retry_when_locked(
            lambda: mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
        )
    try:
        if not resume_run_id:
            retry_when_locked(
                lambda: mlflow.log_params({key: str(value) for key, value in params.items()})
            )
        yield run
    except KeyboardInterrupt:
        _end_run("KILLED")
        raise
    except BaseException:
        _end_run("FAILED")
        raise
    _end_run("FINISHED")


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or written."""


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


def set_tags(tags: dict[str, str]) -> None:
    import mlflow

    retry_when_locked(lambda: mlflow.set_tags(tags))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    retry_when_locked(lambda: mlflow.log_metrics(metrics, step=step))


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    import mlflow

    for path in paths:
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=f"{artifact_path or ''}{path.name}")
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_pytorch_model(model: torch.nn.Module, example: torch.Tensor) -> None:
    """The model in MLflow's pytorch flavour, with a signature from `example`. Requirements
    are given rather than inferred: inference imports the model in a subprocess (slow)."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    model = model.eval()
    with torch.inference_mode():
        output = model(example)
    signature = infer_signature(example.cpu().numpy(), output.cpu().numpy())
    mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example.cpu().numpy(),
        # Pickle keeps any batch size working; "pt2" would trace a fixed example shape.
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    )
