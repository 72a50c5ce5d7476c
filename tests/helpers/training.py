"""The training loop run directly on a composed config, without MLflow: for tests about
what `fit` does, epoch by epoch."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mnist.config import run_settings
from mnist.training.build import set_up
from mnist.training.events import RunListener
from mnist.training.loop import Checkpoints, FitResult, fit
from mnist.training.resume import Learner

CPU = torch.device("cpu")


def run_fit(
    cfg: DictConfig,
    directory: Path,
    resume_from: dict[str, Any] | None = None,
    after_epoch: Callable[[dict[str, float]], None] = lambda metrics: None,
    device: torch.device = CPU,
) -> tuple[FitResult, list[dict[str, float]], Learner]:
    """fit() on `cfg`, set up as a training job sets up, checkpoints in `directory`;
    returns its result, the metrics it reported (one dict per epoch, with its "epoch") and
    the learner. `after_epoch` sees each epoch's metrics as they are reported."""
    settings = run_settings(cfg)
    setup = set_up(settings, device)
    logged: list[dict[str, float]] = []

    class Recorder(RunListener):
        def on_epoch_end(self, metrics: dict[str, float], epoch: int) -> None:
            logged.append({"epoch": epoch, **metrics})
            after_epoch(metrics)

    result = fit(
        setup.learner, setup.data, setup.train_idx, setup.val_idx, settings.trainer, device,
        Checkpoints(directory), Recorder(), resume_from,
    )  # fmt: skip
    return result, logged, setup.learner
