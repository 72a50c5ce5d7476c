"""Trained models back for prediction, from a checkpoint file, an MLflow URI or run id, or
the registered champion. Only weights are read, and the architecture is rebuilt from the
run's own config, restricted to mnist.models: a checkpoint is data, never code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mnist.errors import ConfigError
from mnist.models import build_model
from mnist.targets import refuse_unsafe_config
from mnist.tracking.queries import FORMS, fetched_checkpoint, first_line
from mnist.training.checkpoint import load_checkpoint

RUN_ID = re.compile(r"[0-9a-f]{32}")
DEFAULT_REGISTERED_MODEL = "mnist"


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # in eval mode, on the CPU
    source: str  # where it came from, for messages and reports
    config: dict[str, Any]  # the resolved config of the run that trained it


def load_model_file(path: Path, source: str) -> LoadedModel:
    """The model of a best.pt / last.pt written by the trainer."""
    if not path.is_file():
        raise ConfigError(f"{source}: no such checkpoint file; pass {FORMS}")
    checkpoint = load_checkpoint(path, source=source)
    if not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("model"), dict)
        and isinstance(checkpoint.get("config"), dict)
    ):
        raise ConfigError(
            f"{source}: not a checkpoint of this project (expected the 'model' weights and "
            "the run's 'config', as scripts/train.py writes them)"
        )
    config = checkpoint["config"]
    refuse_unsafe_config(config, source)
    section = config.get("model")
    if not isinstance(section, dict) or "_target_" not in section:
        raise ConfigError(f"{source}: its config has no model._target_ to build the model")
    try:
        model = build_model(section)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        reason = first_line(str(e).split("\n", 1)[-1])
        raise ConfigError(
            f"{source}: its weights do not fit {section['_target_']} "
            f"as its config describes it, so they come from another architecture ({reason})"
        ) from e
    return LoadedModel(model.eval(), source, config)


def load_model(
    checkpoint: str | Path | None = None,
    tracking_uri: str | None = None,
    registered_model: str | None = DEFAULT_REGISTERED_MODEL,
) -> LoadedModel:
    """`checkpoint`: a checkpoint path, runs:/<id>/model, models:/<name>/<version>, a run
    id, or None for models:/<registered_model>@champion where it exists, else the best
    checkpoint of the latest finished run."""
    spec = None if checkpoint is None else str(checkpoint)
    if spec is not None and not spec.startswith(("runs:/", "models:/")):
        path = Path(spec).expanduser()
        if path.exists() or not RUN_ID.fullmatch(spec):
            return load_model_file(path, spec)
    with fetched_checkpoint(spec, tracking_uri, registered_model) as (fetched, source):
        return load_model_file(Path(fetched), source)
