"""What a run trains, built from its config in one order: device, seed, data, split,
the initial model (weights from the seed alone) and the Learner around it. Training, the
benchmark and the tests all set up through `set_up`, so they start from the same data,
weights and random streams (the bit-identical guard depends on this order)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnist.data.augment import BatchAugment
from mnist.data.fetch import ensure_mnist
from mnist.data.tensors import MnistTensors, load_mnist, prepare_split
from mnist.models import build_model
from mnist.seeding import derive_seed, generator, seed_everything
from mnist.training.device import configure_torch, resolve_device
from mnist.training.optim import build_optimizer, build_scheduler
from mnist.training.resume import Learner


@dataclass
class Setup:
    device: torch.device
    data_root: Path
    data: MnistTensors
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    model: torch.nn.Module  # as built, before any torch.compile: what checkpoints hold
    learner: Learner


def set_up(
    cfg: DictConfig,
    device: torch.device | None = None,
    train_size: int | None = None,
    lap: Callable[[str], None] = lambda phase: None,
) -> Setup:
    """A run's device (cfg.device unless given), data, split, model and learner; the
    schedule spans `train_size` images an epoch (default: the training split). `lap` is
    called with "data" once the data is ready (the job times its phases)."""
    device = device or resolve_device(cfg.device.name)
    configure_torch(device, cfg.device, cfg.trainer.deterministic)
    seed_everything(cfg.seed)
    data_root = ensure_mnist(cfg.data.root, verify=cfg.data.verify_checksums)
    data = load_mnist(data_root, device)
    train_idx, val_idx = prepare_split(cfg, data.train_labels)
    lap("data")
    model = initial_model(cfg, device)
    learner = build_learner(cfg, model, device, train_size or len(train_idx))
    return Setup(device, data_root, data, train_idx, val_idx, model, learner)


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
