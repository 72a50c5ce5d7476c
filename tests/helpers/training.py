"""The training loop run directly on a composed config, without MLflow: for tests about
what `fit` does, epoch by epoch."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mnist.data.tensors import MnistTensors, load_mnist, prepare_split
from mnist.seeding import seed_everything
from mnist.training.build import build_learner, initial_model
from mnist.training.events import RunListener
from mnist.training.loop import Checkpoints, FitResult, fit
from mnist.training.resume import Learner

CPU = torch.device("cpu")


def prepare(
    cfg: DictConfig, device: torch.device = CPU
) -> tuple[MnistTensors, torch.Tensor, torch.Tensor, Learner]:
    """(data, train indices, validation indices, learner) as a training job builds them."""
    seed_everything(cfg.seed)
    data = load_mnist(cfg.data.root, device)
    train_idx, val_idx = prepare_split(cfg, data.train_labels)
    model = initial_model(cfg, device)
    return data, train_idx, val_idx, build_learner(cfg, model, device, len(train_idx))


def run_fit(
    cfg: DictConfig,
    directory: Path,
    resume_from: dict[str, Any] | None = None,
    after_epoch: Callable[[dict[str, float]], None] = lambda metrics: None,
    device: torch.device = CPU,
) -> tuple[FitResult, list[dict[str, float]], Learner]:
    """fit() on `cfg`, checkpoints in `directory`; returns its result, the metrics it
    logged (one dict per epoch, with its "epoch") and the learner. `after_epoch` sees each
    epoch's metrics as they are logged."""
    data, train_idx, val_idx, learner = prepare(cfg, device)
    logged: list[dict[str, float]] = []

    class Recorder(RunListener):
        def on_epoch_end(self, metrics: dict[str, float], epoch: int) -> None:
            logged.append({"epoch": epoch, **metrics})
            after_epoch(metrics)

    result = fit(
        learner, data, train_idx, val_idx, cfg.trainer, device, Checkpoints(directory),
        Recorder(), resume_from,
    )  # fmt: skip
    return result, logged, learner
