"""`trainer.resume=<checkpoint path | MLflow run id>`: find the last.pt of an interrupted
run, so the run continues where it stopped, in the same MLflow run."""

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist.checkpoint import load_checkpoint
from mnist.config import ConfigError, validate_config

_RUN_ID = re.compile(r"[0-9a-f]{32}")


def _checkpoint_of_run(run_id: str, uri: str) -> Path:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as e:
        raise ConfigError(f"trainer.resume={run_id}: no such MLflow run in {uri}") from e
    output_dir = run.data.tags.get("output_dir")
    checkpoint = Path(output_dir) / "checkpoints" / "last.pt" if output_dir else None
    if checkpoint is None or not checkpoint.is_file():
        raise ConfigError(
            f"trainer.resume={run_id}: the run's last checkpoint is not on this machine "
            f"({checkpoint or 'no output_dir tag'}); pass its path as trainer.resume"
        )
    return checkpoint


def load_resume_checkpoint(target: str, uri: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint path and its contents; ConfigError if it cannot be resumed."""
    path = Path(target).expanduser()
    if not path.is_file():
        if not _RUN_ID.fullmatch(target):
            raise ConfigError(
                f"trainer.resume={target!r} is neither a checkpoint file nor an MLflow run id"
            )
        path = _checkpoint_of_run(target, uri)
    try:
        state = load_checkpoint(path)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise ConfigError(f"trainer.resume={target}: cannot read {path} ({e})") from e
    if "progress" not in state or "mlflow_run_id" not in state:
        raise ConfigError(
            f"trainer.resume={target}: {path} is not a resumable checkpoint "
            "(best.pt holds weights only; resume from last.pt)"
        )
    return path, state


def resume_config(state: dict[str, Any], path: Path) -> DictConfig:
    """The interrupted run's own config, validated like one from the command line."""
    try:
        cfg = OmegaConf.create(state["config"])
        validate_config(cfg)
    except (OmegaConfBaseException, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: the checkpoint's config is incomplete or invalid ({e})") from e
    return cfg
