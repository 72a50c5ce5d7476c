"""The MLflow run of a job: always ended with the right status, tagged with its code and
machine. MLflow is imported inside the functions: commands that never track skip its import."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import platform
import posixpath
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mnist.data.batches import MNIST_MEAN, MNIST_STD
from mnist.paths import REPO_ROOT
from mnist.tracking.store import NOTE_TAG, get_or_create_experiment, retry_when_locked
from mnist.tracking.ui import how_to_open, run_path

log = logging.getLogger(__name__)

MODEL_CONTRACT = (
    f"Input: float32 (N, 1, 28, 28), any N: MNIST-style digits, white on black, pixels scaled "
    f"to [0, 1] then normalised as (x - {MNIST_MEAN}) / {MNIST_STD}. Output: (N, 10) logits of "
    "the digits 0-9. scripts/predict.py makes this input from any image "
    "(mnist.inference.digits.to_mnist, then model_input)."
)

# MLflow's notes the user cannot act on (uv, pip's version, system metrics starting), and
# the tracebacks and retry warnings of a failing store, which the job reports in one line.
QUIETED = {
    "mlflow.utils.uv_utils": logging.WARNING,
    "mlflow.utils.environment": logging.ERROR,
    "mlflow.system_metrics.system_metrics_monitor": logging.WARNING,
    "mlflow.store.db.utils": logging.CRITICAL,
    "urllib3.connectionpool": logging.ERROR,
}
for _name, _level in QUIETED.items():
    logging.getLogger(_name).setLevel(_level)


def _end_run(status: str) -> None:
    """mlflow.end_run forgets the active run before it writes the status, so retrying it
    could leave the run RUNNING: the status is written first. Where the store cannot record
    it, the run is forgotten all the same (MLflow's exit hook would end it FINISHED)."""
    import mlflow

    run_id = mlflow.active_run().info.run_id
    try:
        retry_when_locked(lambda: mlflow.MlflowClient().set_terminated(run_id, status))
    except Exception:
        with contextlib.suppress(Exception):
            mlflow.end_run(status)  # forgets the run, then tries to record its end again
        raise
    retry_when_locked(lambda: mlflow.end_run(status))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str, str]:
    """(commit, uncommitted changes: "true"/"false"/"unknown")."""
    status = _git("status", "--porcelain")
    dirty = "unknown" if status is None else str(bool(status)).lower()
    return _git("rev-parse", "HEAD") or "unknown", dirty


def run_tags(seed: int, device: torch.device, overrides: list[str], model: str) -> dict[str, str]:
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
        # From metadata: importing torchvision for its version takes seconds.
        "torchvision.version": importlib.metadata.version("torchvision"),
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
    experiment_tags: Callable[[str], dict[str, str]] | None = None,
    system_metrics: bool = False,
) -> Iterator[Any]:
    """An active MLflow run that always ends: FINISHED, KILLED on Ctrl-C, FAILED on any
    other exception (re-raised). `resume_run_id`: that run continued (its params as logged)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    # A registry URI set earlier in this process must not receive this run's models.
    mlflow.set_registry_uri(uri)
    start: dict[str, Any] = {"run_id": resume_run_id}
    if not resume_run_id:
        experiment_id = retry_when_locked(
            lambda: get_or_create_experiment(uri, experiment, experiment_tags)
        )
        start = {"experiment_id": experiment_id, "run_name": run_name, "tags": tags}
    run = retry_when_locked(lambda: mlflow.start_run(**start, log_system_metrics=system_metrics))
    try:
        if not resume_run_id:
            retry_when_locked(lambda: mlflow.log_params(params))
        yield run
    except BaseException as stopped:
        # Where the store is what failed, its first error is the one to report.
        with contextlib.suppress(Exception):
            _end_run("KILLED" if isinstance(stopped, KeyboardInterrupt) else "FAILED")
        raise
    _end_run("FINISHED")


def log_run(
    uri: str, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any],
    metrics: dict[str, float], paths: list[Path], what: str,
) -> None:  # fmt: skip
    """A command's result as a finished run; says how to open `what` (e.g. "the comparison")."""
    with mlflow_run(uri, experiment, run_name, tags, params) as run:
        log_metrics(metrics)
        log_artifacts(paths)
    log.info("Logged as run %s in experiment %r", run.info.run_id, experiment)
    if hint := how_to_open(uri, run_path(run.info.experiment_id, run.info.run_id)):
        log.info("See %s: %s", what, hint)


def set_tags(tags: dict[str, str]) -> None:
    import mlflow

    retry_when_locked(lambda: mlflow.set_tags(tags))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    retry_when_locked(lambda: mlflow.log_metrics(metrics, step=step))


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    """A failed copy into a local store deletes what this call wrote (on a full disk, recording
    the run's end needs that room) and raises MlflowException, as a server would."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    written: list[str] = []
    for path in paths:
        written.append(posixpath.join(artifact_path or "", path.name))
        try:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=written[-1])
            else:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)
        except OSError as e:
            store = get_artifact_repository(mlflow.get_artifact_uri())
            for destination in written:
                store.delete_artifacts(destination)
            raise MlflowException(f"uploading {written[-1]} failed: {e}") from e


def _discard_unfinished_models(name: str) -> bool:
    """Whether the active run has a complete model `name`. Deletes the unfinished ones (a
    stopped process's PENDING one would shadow it; a failed upload's files take room)."""
    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run = mlflow.active_run()
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{name}'",
        output_format="list",
    )
    for model in models:
        if model.status != LoggedModelStatus.READY:
            get_artifact_repository(model.artifact_location).delete_artifacts()
            mlflow.MlflowClient().delete_logged_model(model.model_id)
    return any(model.status == LoggedModelStatus.READY for model in models)


def log_pytorch_model(
    model: torch.nn.Module,
    example: torch.Tensor,
    name: str,
    registered_name: str | None = None,
    step: int = 0,
) -> None:
    """As torch.export's pt2 graph (loads without this package or unpickling), unless a resumed
    run had logged it. `example`: a batch of 2 or more (the batch dimension stays dynamic).
    Requirements given, example not re-validated: each would load the model again."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    if _discard_unfinished_models(name):
        return
    # The standard layout: torch.export cannot store channels_last weights whole.
    model = model.eval().to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        output = model(example)
    try:
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            signature=infer_signature(example.cpu().numpy(), output.cpu().numpy()),
            input_example=example.cpu().numpy(),
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
            metadata={"contract": MODEL_CONTRACT},
            tags={NOTE_TAG: MODEL_CONTRACT},
            registered_model_name=registered_name,
            step=step,
            validate_serving_input=False,
        )
    except Exception:
        with contextlib.suppress(Exception):  # the store may be what failed: raise its error
            _discard_unfinished_models(name)
        raise
    if registered_name:
        version = info.registered_model_version
        mlflow.MlflowClient().update_model_version(registered_name, version, MODEL_CONTRACT)
