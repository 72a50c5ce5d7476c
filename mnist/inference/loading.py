"""Trained models back for prediction: from a checkpoint file, an MLflow model URI or run
id, or by default the registered champion (models:/<name>@champion, scripts/promote.py)
and without one the best checkpoint of the latest finished run. Only weights are read
(weights_only=True) and the architecture is rebuilt from the run's own config, restricted
to the classes of mnist.models: a checkpoint is data, never code. MLflow URIs are resolved
to the run that logged the model and that run's checkpoint, for the same reason: the
MLflow pytorch flavour is a pickle, and loading it would run whatever it contains."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mnist.errors import CheckpointError, ModelConfigError
from mnist.models import build_model
from mnist.paths import DEFAULT_MLRUNS
from mnist.targets import refuse_unsafe_config
from mnist.tracking import store
from mnist.tracking.registry import CHAMPION
from mnist.training.checkpoint import load_checkpoint

CHECKPOINT_ARTIFACT = "checkpoints/best.pt"
RUN_ID = re.compile(r"[0-9a-f]{32}")
# How many of the most recent finished runs are searched for one with a checkpoint.
RECENT_RUNS = 100
FORMS = "a checkpoint path, runs:/<run id>/model, models:/<name>/<version>, or a run id"
# The registered model whose champion prediction uses when no model is named.
DEFAULT_REGISTERED_MODEL = "mnist"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def _build(config: dict[str, Any], source: str) -> nn.Module:
    """The model the run's config describes, built by mnist.models.build_model, which
    refuses any `_target_` outside this package's models before importing anything."""
    section = config.get("model")
    if not isinstance(section, dict) or "_target_" not in section:
        raise CheckpointError(f"{source}: its config has no model._target_ to build the model")
    try:
        return build_model(section)
    except ModelConfigError as e:
        raise CheckpointError(f"{source}: {e}") from e


def _read_checkpoint(path: Path, source: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{source}: no such checkpoint file; pass {FORMS}")
    checkpoint = load_checkpoint(path, source=source)
    if not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("model"), dict)
        and isinstance(checkpoint.get("config"), dict)
    ):
        raise CheckpointError(
            f"{source}: not a checkpoint of this project (expected the 'model' weights and "
            "the run's 'config', as scripts/train.py writes them)"
        )
    refuse_unsafe_config(checkpoint["config"], source)
    return checkpoint


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # in eval mode, on the CPU
    source: str  # where it came from, for messages and reports
    config: dict[str, Any]  # the resolved config of the run that trained it


def load_model_file(path: str | Path, source: str | None = None) -> LoadedModel:
    """The model of a best.pt / last.pt written by the trainer."""
    source = source or str(path)
    checkpoint = _read_checkpoint(Path(path), source)
    model = _build(checkpoint["config"], source)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        reason = _first_line(str(e).split("\n", 1)[-1])
        raise CheckpointError(
            f"{source}: its weights do not fit {checkpoint['config']['model']['_target_']} "
            f"as its config describes it, so they come from another architecture ({reason})"
        ) from e
    return LoadedModel(model.eval(), source, checkpoint["config"])


def store_uri(configured: str | None = None, mlruns: str | Path = DEFAULT_MLRUNS) -> str:
    """The MLflow store, located as training locates it; refused early if it is a local
    SQLite file that does not exist (MLflow would create an empty store), and checked as
    training checks it (a corrupt file, an unreachable server: one line, at once); it is
    only read, so a read-only one serves."""
    uri = store.tracking_uri(configured, mlruns)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise CheckpointError(
            f"no MLflow store at {uri}; train a model first (python scripts/train.py) or "
            f"pass {FORMS}"
        )
    store.check_store(uri, writes=False)
    return uri


def latest_finished_run(uri: str) -> str:
    """The most recent FINISHED run that has a checkpoint (evaluation runs have none)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=RECENT_RUNS,
    )
    for run in runs:
        artifacts = client.list_artifacts(run.info.run_id, "checkpoints")
        if any(artifact.path == CHECKPOINT_ARTIFACT for artifact in artifacts):
            return run.info.run_id
    raise CheckpointError(
        f"no finished run with a {CHECKPOINT_ARTIFACT} in {uri}; train a model first "
        f"(python scripts/train.py) or pass {FORMS}"
    )


def _registered_run(model_uri: str, uri: str) -> str:
    """The run behind models:/<name>/<version>, models:/<name>@<alias> or models:/<id>."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    name, slash, version = model_uri.removeprefix("models:/").partition("/")
    if slash and version.isdigit():
        return client.get_model_version(name, version).run_id
    if not slash and "@" in name:
        return client.get_model_version_by_alias(*name.split("@", 1)).run_id
    if not slash and name.startswith("m-"):
        return client.get_logged_model(name).source_run_id
    raise CheckpointError(
        f"{model_uri}: expected models:/<name>/<version>, models:/<name>@<alias> or "
        "models:/<model id>"
    )


def champion_run(uri: str, name: str) -> str | None:
    """The run of models:/<name>@champion; None when there is no such model or alias."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return _registered_run(f"models:/{name}@{CHAMPION}", uri)


def _load_from_run(spec: str | None, uri: str, registered_model: str | None) -> LoadedModel:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

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
            path = download_artifacts(
                run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=tmp, tracking_uri=uri
            )
            return load_model_file(path, source)
    except (MlflowException, OSError) as e:
        raise CheckpointError(
            f"{spec or 'latest finished run'}: cannot fetch its checkpoint from {uri} "
            f"({_first_line(e)}); pass {FORMS}"
        ) from e


def load_model(
    checkpoint: str | Path | None = None,
    tracking_uri: str | None = None,
    registered_model: str | None = DEFAULT_REGISTERED_MODEL,
) -> LoadedModel:
    """`checkpoint`: a checkpoint path, runs:/<id>/model, models:/<name>/<version>, a run
    id, or None for models:/<registered_model>@champion where it exists, else the best
    checkpoint of the latest finished run. MLflow is imported only when it is not a path."""
    spec = None if checkpoint is None else str(checkpoint)
    if spec is not None and not spec.startswith(("runs:/", "models:/")):
        path = Path(spec).expanduser()
        if path.exists() or not RUN_ID.fullmatch(spec):
            return load_model_file(path, spec)
    return _load_from_run(spec, store_uri(tracking_uri), registered_model)
