"""Optimizer and learning-rate schedule from the `optimizer` and `scheduler` config groups."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

SCHEDULERS = ("none", "step", "onecycle", "cosine", "plateau")


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """`cfg` is a partial `_target_` config (conf/optimizer/*.yaml)."""
    return instantiate(cfg)(model.parameters())


@dataclass
class Schedule:
    """A scheduler and when the trainer steps it: after every batch ("step"), after every
    epoch ("epoch"), or after every epoch with the validation accuracy ("plateau")."""

    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    interval: str


def _step(cfg, optimizer, epochs, steps):
    return Schedule(torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma), "epoch")


def _onecycle(cfg, optimizer, epochs, steps):
    max_lr = [group["lr"] * cfg.max_lr_factor for group in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=epochs * steps, pct_start=cfg.pct_start
    )
    return Schedule(scheduler, "step")


def _cosine(cfg, optimizer, epochs, steps):
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * steps, eta_min=cfg.min_lr
    )
    return Schedule(scheduler, "step")


def _plateau(cfg, optimizer, epochs, steps):
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.factor, patience=cfg.patience
    )
    return Schedule(scheduler, "plateau")


_BUILDERS: dict[str, Callable[..., Schedule]] = {
    "step": _step,
    "onecycle": _onecycle,
    "cosine": _cosine,
    "plateau": _plateau,
}


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> Schedule | None:
    """Schedules that span the run (onecycle, cosine) need its length, hence the counts."""
    if cfg.name == "none":
        return None
    return _BUILDERS[cfg.name](cfg, optimizer, epochs, steps_per_epoch)
