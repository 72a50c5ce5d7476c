"""What a run trains, built from its settings in one order: device, seed, data, split,
the initial model (weights from the seed alone) and the Learner around it. Training, the
benchmark and the tests all set up through `set_up`, so they start from the same data,
weights and random streams (the bit-identical guard depends on this order)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnist.data.augment import BatchAugment
from mnist.data.fetch import ensure_mnist
from mnist.data.tensors import DataSettings, MnistTensors, load_mnist
from mnist.models import build_model
from mnist.seeding import derive_seed, generator, seed_everything
from mnist.training.device import DeviceSettings, configure_torch, resolve_device
from mnist.training.optim import build_optimizer, build_scheduler
from mnist.training.resume import Learner
from mnist.training.settings import Trainer


@dataclass(frozen=True)
class RunSettings:
    """What a run is set up from: the groups of a composed config that the core reads,
    typed; the model, optimizer, schedule and augmentation as the keyword arguments of what
    they build (a model is any nn.Module class taking its config's keys)."""

    seed: int
    device: DeviceSettings
    data: DataSettings
    trainer: Trainer
    model: Mapping[str, Any]
    optimizer: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    augmentation: Mapping[str, Mapping[str, Any]]

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> RunSettings:
        """From a validated composed config as plain containers (mnist/config.py)."""
        return cls(
            seed=config["seed"],
            device=DeviceSettings(**config["device"]),
            data=DataSettings(**config["data"]),
            trainer=Trainer.from_mapping(config["trainer"]),
            model=config["model"],
            optimizer=config["optimizer"],
            scheduler=config["scheduler"],
            augmentation=config["augmentation"],
        )


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
    settings: RunSettings,
    device: torch.device | None = None,
    train_size: int | None = None,
    lap: Callable[[str], None] = lambda phase: None,
) -> Setup:
    """A run's device (settings.device unless given), data, split, model and learner; the
    schedule spans `train_size` images an epoch (default: the training split). `lap` is
    called with "data" once the data is ready (the job times its phases)."""
    device = device or resolve_device(settings.device.name)
    configure_torch(device, settings.device, settings.trainer.deterministic)
    seed_everything(settings.seed)
    data_root = ensure_mnist(settings.data.root, verify=settings.data.verify_checksums)
    data = load_mnist(data_root, device)
    train_idx, val_idx = settings.data.split(data.train_labels, settings.seed)
    lap("data")
    model = initial_model(settings, device)
    learner = build_learner(settings, model, device, train_size or len(train_idx))
    return Setup(device, data_root, data, train_idx, val_idx, model, learner)


def initial_model(settings: RunSettings, device: torch.device) -> torch.nn.Module:
    """The model before training: weights from the seed alone, on `device`, in the memory
    layout the trainer settings ask for."""
    torch.manual_seed(derive_seed(settings.seed, "model"))
    model = build_model(settings.model).to(device)
    if settings.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_learner(
    settings: RunSettings, model: torch.nn.Module, device: torch.device, train_size: int
) -> Learner:
    """Optimizer, schedule, gradient scaler, augmentation, shuffle order and moving average
    for `model` (compiled first when trainer.compile is on; the optimizer holds the same
    parameters)."""
    trainer, seed = settings.trainer, settings.seed
    optimizer = build_optimizer(settings.optimizer, model)
    steps_per_epoch = max(1, train_size // trainer.batch_size)
    schedule = build_scheduler(settings.scheduler, optimizer, trainer.epochs, steps_per_epoch)
    augment = BatchAugment.from_config(settings.augmentation, generator(seed, "augment", device))
    ema = None
    if decay := trainer.ema_decay:
        # BatchNorm's running statistics are averaged too: no extra pass over the data.
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return Learner(
        model=torch.compile(model) if trainer.compile else model,
        optimizer=optimizer,
        schedule=schedule,
        scaler=torch.amp.GradScaler(device.type, enabled=trainer.precision == "fp16"),
        augment=augment,
        shuffle=generator(seed, "shuffle"),
        ema=ema,
    )
