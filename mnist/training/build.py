"""What a run trains, built from its settings in one order (device, seed, data, split, model,
learner) that training, the benchmark and the tests share: reproducibility depends on it."""

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
    """The config groups the core reads; model, optimizer, scheduler and augmentation are the
    keyword arguments of what they build."""

    seed: int
    device: DeviceSettings
    data: DataSettings
    trainer: Trainer
    model: Mapping[str, Any]
    optimizer: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    augmentation: Mapping[str, Mapping[str, Any]]

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> "RunSettings":
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
    """The schedule spans `train_size` images an epoch (default: the training split); `lap`
    is called with "data" once the data is ready."""
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
    """The model before training: weights from the seed alone."""
    torch.manual_seed(derive_seed(settings.seed, "model"))
    model = build_model(settings.model).to(device)
    if settings.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_learner(
    settings: RunSettings, model: torch.nn.Module, device: torch.device, train_size: int
) -> Learner:
    """Everything training changes around `model` (compiled, with trainer.compile)."""
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
