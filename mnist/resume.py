"""trainer.resume=<checkpoint path | MLflow run id>: the last.pt of an interrupted run, its
own config, and the command-line overrides that therefore do not apply."""

import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist.config import as_now, validate_config
from mnist.errors import ConfigError
from mnist.overrides import override_key
from mnist.targets import first_line, refuse_unsafe_config
from mnist.tracking.listener import checkpoint_of_run
from mnist.training.checkpoint import load_checkpoint
from mnist.training.device import available

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"[0-9a-f]{32}")


def resume_checkpoint_path(target: str, uri: str) -> Path:
    """The last.pt that trainer.resume=<path | run id> names; ConfigError if there is none."""
    path = Path(target).expanduser()
    if path.is_file():
        return path
    if not _RUN_ID.fullmatch(target):
        raise ConfigError(
            f"trainer.resume={target!r} is neither a checkpoint file nor an MLflow run id"
        )
    return checkpoint_of_run(target, uri)


def load_resume_checkpoint(target: str, path: Path) -> dict[str, Any]:
    """The contents of `path`; ConfigError if it cannot be resumed."""
    state = load_checkpoint(path, source=f"trainer.resume={target} ({path})")
    if not isinstance(state, dict) or "progress" not in state or "mlflow_run_id" not in state:
        raise ConfigError(
            f"trainer.resume={target}: {path} is not a resumable checkpoint "
            "(best.pt holds weights only; resume from last.pt)"
        )
    return state


def resume_config(state: dict[str, Any], path: Path, device: DictConfig) -> DictConfig:
    """The interrupted run's own config, checked as a stored config and validated; a device
    this machine lacks (a GPU run resumed on a laptop) gives way to `device`, the command
    line's."""
    try:
        cfg = OmegaConf.create(state["config"])
        refuse_unsafe_config(cfg, str(path))
        cfg = as_now(cfg)
        if cfg.device.name in ("cuda", "mps") and not available(cfg.device.name):
            log.warning("The run trained with device=%s, which this machine lacks: resuming "
                        "with device=%s", cfg.device.name, device.name)  # fmt: skip
            cfg.device = device
        validate_config(cfg)
    except (OmegaConfBaseException, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path}: the checkpoint's config is incomplete or invalid ({first_line(e)})"
        ) from e
    return cfg


def ignored_overrides(given: DictConfig, resumed: DictConfig, overrides: list[str]) -> list[str]:
    """The command-line overrides whose values differ from the resumed run's own config."""
    ignored = []
    for override in overrides:
        key = override_key(override)
        # How this run was asked to resume, not a value of its config.
        if key == "trainer.resume" or key.startswith("sweep."):
            continue
        now, then = (OmegaConf.select(c, key, default=None) for c in (given, resumed))
        if _plain(now) != _plain(then):
            ignored.append(override)
    return ignored


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
