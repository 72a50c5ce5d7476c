"""What a run trains, built from its config: the initial model (weights from the seed
alone) and the Learner around it. Shared by training and the benchmark, so both start
from the same weights and the same random streams."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnist.data.augment import BatchAugment
from mnist.models import build_model
from mnist.seeding import derive_seed, generator
from mnist.training.optim import build_optimizer, build_scheduler
from mnist.training.resume import Learner


def initial_model(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The model before training: weights from the seed alone, on `device`, in the memory
    layout the trainer config asks for."""
    torch.manual_seed(derive_seed(cfg.seed, "model"))
    model = build_model(cfg.model).to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_learner(
    cfg: DictConfig, model: torch.nn.Module, device: torch.device, train_size: int
) -> Learner:
    """Optimizer, schedule, gradient scaler, augmentation, shuffle order and moving average
    for `model` (compiled first when trainer.compile is on; the optimizer holds the same
    parameters)."""
    optimizer = build_optimizer(cfg.optimizer, model)
    steps_per_epoch = max(1, train_size // cfg.trainer.batch_size)
    schedule = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.epochs, steps_per_epoch)
    augment = BatchAugment.from_config(cfg.augmentation, generator(cfg.seed, "augment", device))
    ema = None
    if decay := cfg.trainer.ema_decay:
        # BatchNorm's running statistics are averaged too: no extra pass over the data.
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return Learner(
        model=torch.compile(model) if cfg.trainer.compile else model,
        optimizer=optimizer,
        schedule=schedule,
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision == "fp16"),
        augment=augment,
        shuffle=generator(cfg.seed, "shuffle"),
        ema=ema,
    )
