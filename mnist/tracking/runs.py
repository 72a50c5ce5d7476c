"""The MLflow run of a job: its lifecycle (always ended, with the right status), what
identifies it (git state, versions, host) and what it logs. MLflow is imported inside the
functions because importing it costs seconds that commands which never track should not
pay."""

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

# What a logged model expects and returns: its description in MLflow, and its metadata.
MODEL_CONTRACT = (
    f"Input: float32 (N, 1, 28, 28), any N: MNIST-style digits, white on black, pixels scaled "
    f"to [0, 1] then normalised as (x - {MNIST_MEAN}) / {MNIST_STD}. Output: (N, 10) logits of "
    "the digits 0-9. scripts/predict.py makes this input from any image "
    "(mnist.inference.digits.to_mnist, then model_input)."
)

# MLflow's notes on every job that the user cannot act on: that the project uses uv, that
# pip's version cannot be read in a uv environment without pip (a warning), and the start
# and stop of system metrics. And what a store that fails prints before the error that the
# job reports in one line (mnist/job.py): the traceback of each failed SQL
# statement, a warning for each retry of a request to a server that is gone.
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
    could leave the run RUNNING: write the status first, retried, then end the run. Where
    the store cannot record it (a server gone, a full disk), the run is forgotten all the
    same, and stays RUNNING there until it is resumed: MLflow's exit hook would end it as
    FINISHED, and the next job of this process could not start its own run."""
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
    experiment_tags: Callable[[str], dict[str, str]] | None = None,
    system_metrics: bool = False,
) -> Iterator[Any]:
    """An active MLflow run that always ends: FINISHED, KILLED on Ctrl-C, FAILED on any
    other exception (re-raised), so a crashed job never leaves a run RUNNING, unless its
    store is what failed and cannot record the end (_end_run). With
    `resume_run_id`, the interrupted run is continued instead (its params stay as logged).
    `experiment_tags`: see store.get_or_create_experiment; `system_metrics`: MLflow's
    CPU, memory, disk, network (and GPU, with nvidia-ml-py) metrics under system/."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    # The registry too (logger.register): a registry URI set earlier in this process, by
    # promote.py or a previous job, must not receive this run's model versions.
    mlflow.set_registry_uri(uri)
    if resume_run_id:
        run = retry_when_locked(
            lambda: mlflow.start_run(run_id=resume_run_id, log_system_metrics=system_metrics)
        )
    else:
        experiment_id = retry_when_locked(
            lambda: get_or_create_experiment(uri, experiment, experiment_tags)
        )
        run = retry_when_locked(
            lambda: mlflow.start_run(
                experiment_id=experiment_id,
                run_name=run_name,
                tags=tags,
                log_system_metrics=system_metrics,
            )
        )
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


def set_tags(tags: dict[str, str]) -> None:
    import mlflow

    retry_when_locked(lambda: mlflow.set_tags(tags))


def log_metrics(
    metrics: dict[str, float], step: int | None = None, model_id: str | None = None
) -> None:
    """`model_id`: the logged model these metrics describe (shown with the model too)."""
    import mlflow

    retry_when_locked(lambda: mlflow.log_metrics(metrics, step=step, model_id=model_id))


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    """Files and folders (a folder under its own name) into the active run. A copy into a
    local store that fails leaves the store as it was: what this call wrote is deleted (a
    resumed run uploads it all again, and on a full disk that room is what recording the
    run's end needs), and MlflowException is raised, as for a server, not a bare OSError."""
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
    """Whether the active run has a complete model `name`. Deletes the unfinished ones,
    files first: those of a process stopped while logging it (PENDING), which would shadow
    it, and what a failed upload wrote, which on a full disk is the space the run needs to
    record its end."""
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
) -> str | None:
    """The model as MLflow 3 logs it, named `name` (the model option), and returns its id:
    torch.export's pt2 graph, which loads without this package and without unpickling
    code; the batch dimension stays dynamic (`example` needs a batch of 2 or more). With
    `registered_name`, also a new version of that registered model. Metrics logged at
    `step` afterwards are the model's too (MLflow links them). Logged once per run: a
    resumed run that had logged it keeps that one (None). Requirements are given rather
    than inferred: inference imports the model in a subprocess (slow). MLflow's check of
    the input example (it loads the saved model back and predicts, ~3 s on 2 CPUs, and
    only warns when that fails) is left out: the model has just run on the example here,
    and the tests load logged models and predict."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    if _discard_unfinished_models(name):
        return None
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
        from mlflow.tracking import MlflowClient

        version = info.registered_model_version
        MlflowClient().update_model_version(registered_name, version, MODEL_CONTRACT)
    return info.model_id
