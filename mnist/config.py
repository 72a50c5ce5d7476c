"""Validation of a composed training config, run before anything is downloaded, built or
logged, and its flat form for MLflow params."""

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mnist.data.tensors import MNIST_TRAIN_SIZE
from mnist.errors import ConfigError, ModelConfigError, UnsafeConfigError
from mnist.extras import missing
from mnist.models import build_model
from mnist.training.device import (
    available,
    determinism_problem,
    precision_problem,
    resolve_device,
)
from mnist.training.optim import SCHEDULERS, check_optimizer


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _boolean_problems(group: str, section: DictConfig, keys: tuple[str, ...]) -> Iterator[str]:
    for key in keys:
        if not isinstance(section[key], bool):
            yield f"{group}.{key}={section[key]!r} must be true or false"


def _problems(cfg: DictConfig) -> Iterator[str]:
    if not _is_int(cfg.seed) or cfg.seed < 0:
        yield f"seed={cfg.seed!r} must be an integer >= 0"
    yield from _trainer_problems(cfg.trainer)
    yield from _data_problems(cfg.data)
    yield from _augmentation_problems(cfg.augmentation)
    yield from _optimization_and_model_problems(cfg)
    yield from _scheduler_problems(cfg.scheduler)
    yield from _logger_problems(cfg.logger)
    yield from _device_problems(cfg.device, cfg.trainer.precision)
    yield from _determinism_problems(cfg)
    resume = OmegaConf.select(cfg, "sweep.resume", default=False)
    if not isinstance(resume, bool):
        yield f"sweep.resume={resume!r} must be true or false"


def _trainer_problems(trainer: DictConfig) -> Iterator[str]:
    switches = ("deterministic", "test_every_epoch", "progress", "channels_last", "compile")
    yield from _boolean_problems("trainer", trainer, switches)
    for key in ("epochs", "batch_size", "eval_batch_size"):
        value = trainer[key]
        if not _is_int(value) or value < 1:
            yield f"trainer.{key}={value!r} must be an integer >= 1"
    if not (_is_number(trainer.label_smoothing) and 0 <= trainer.label_smoothing < 1):
        yield f"trainer.label_smoothing={trainer.label_smoothing!r} must be in [0, 1)"
    if trainer.grad_clip is not None and not (
        _is_finite(trainer.grad_clip) and trainer.grad_clip > 0
    ):
        yield f"trainer.grad_clip={trainer.grad_clip!r} must be > 0, or null to disable clipping"
    patience = trainer.early_stopping.patience
    if patience is not None and (not _is_int(patience) or patience < 1):
        yield f"trainer.early_stopping.patience={patience!r} must be >= 1, or null to disable"
    min_delta = trainer.early_stopping.min_delta
    if not (_is_finite(min_delta) and min_delta >= 0):
        yield f"trainer.early_stopping.min_delta={min_delta!r} must be >= 0"
    target = trainer.target_acc
    if target is not None and not (_is_number(target) and 0 < target <= 1):
        yield f"trainer.target_acc={target!r} must be in (0, 1], or null to train all epochs"


def _data_problems(data: DictConfig) -> Iterator[str]:
    if not _is_int(data.val_size) or not 1 <= data.val_size < MNIST_TRAIN_SIZE:
        yield (
            f"data.val_size={data.val_size!r} must be an integer between 1 and "
            f"{MNIST_TRAIN_SIZE - 1} (the validation split comes out of the training set)"
        )
    subset = data.train_subset
    if subset is not None and (not _is_int(subset) or subset < 1):
        yield f"data.train_subset={subset!r} must be an integer >= 1, or null for all images"
    yield from _boolean_problems("data", data, ("stratify", "verify_checksums"))
    root = Path(str(data.root))
    existing = next((path for path in (root, *root.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        yield f"data.root={data.root} must be a directory, and {existing} is a file"


def _augmentation_problems(aug: DictConfig) -> Iterator[str]:
    if not (_is_finite(aug.rotate_deg) and aug.rotate_deg >= 0) or not (
        _is_number(aug.translate) and 0 <= aug.translate < 1
    ):
        yield "augmentation.rotate_deg must be >= 0 and augmentation.translate in [0, 1)"
    if not (_is_number(aug.crop_prob) and 0 <= aug.crop_prob <= 1) or not (
        _is_int(aug.crop_size) and 1 <= aug.crop_size <= 28
    ):
        yield "augmentation.crop_prob must be in [0, 1] and augmentation.crop_size in [1, 28]"


def _optimization_and_model_problems(cfg: DictConfig) -> Iterator[str]:
    if not (_is_finite(cfg.optimizer.lr) and cfg.optimizer.lr > 0):
        yield f"optimizer.lr={cfg.optimizer.lr!r} must be a finite number > 0"
    else:
        try:  # torch.optim checks the other values (momentum, betas, ...)
            check_optimizer(cfg.optimizer)
        except UnsafeConfigError as e:
            yield str(e)
        except (TypeError, ValueError) as e:
            yield f"optimizer.* cannot build {cfg.optimizer._target_} ({e})"
    try:
        with torch.device("meta"):  # checks the arguments; allocates and draws nothing
            build_model(cfg.model)
    except ModelConfigError as e:
        yield str(e)


# What each schedule's values must be (mnist/training/optim.py builds them): torch checks
# few of them, and some only when the schedule first steps, an epoch into the run.
_SCHEDULE_RULES = {
    "step": {
        "step_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "gamma": (lambda v: _is_finite(v) and v > 0, "a number > 0"),
    },
    "onecycle": {
        "max_lr_factor": (lambda v: _is_finite(v) and v > 0, "a number > 0"),
        "pct_start": (lambda v: _is_finite(v) and 0 < v < 1, "a number in (0, 1)"),
    },
    "cosine": {"min_lr": (lambda v: _is_finite(v) and v >= 0, "a number >= 0")},
    "plateau": {
        "factor": (lambda v: _is_finite(v) and 0 < v < 1, "a number in (0, 1)"),
        "patience": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    },
}


def _scheduler_problems(scheduler: DictConfig) -> Iterator[str]:
    if scheduler.name not in SCHEDULERS:
        yield f"scheduler.name={scheduler.name!r} is not one of {', '.join(SCHEDULERS)}"
        return
    for key, (valid, expected) in _SCHEDULE_RULES.get(scheduler.name, {}).items():
        value = scheduler.get(key)
        if not valid(value):
            yield f"scheduler.{key}={value!r} must be {expected} (scheduler={scheduler.name})"


# logger switches: (the module each needs, the extra that installs it).
LOGGER_SWITCHES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "system_metrics": ("psutil", "monitoring"),
}


def _logger_problems(logger: DictConfig) -> Iterator[str]:
    if not (isinstance(logger.experiment, str) and logger.experiment.strip()):
        yield f"logger.experiment={logger.experiment!r} must be a non-empty name"
    yield from _boolean_problems("logger", logger, ("log_model",))
    for key, (module, extra) in LOGGER_SWITCHES.items():
        if not isinstance(logger[key], bool):
            yield f"logger.{key}={logger[key]!r} must be true or false"
        elif logger[key] and (problem := missing(module, extra, f"logger.{key}=true")):
            yield problem
    if logger.register is not None and not (isinstance(logger.register, str) and logger.register):
        yield f"logger.register={logger.register!r} must be a model name, or null"


def _device_problems(device: DictConfig, precision: str) -> Iterator[str]:
    if not (isinstance(device.malloc_tuning, bool) or device.malloc_tuning == "auto"):
        yield f"device.malloc_tuning={device.malloc_tuning!r} must be auto, true or false"
    threads = device.num_threads
    if threads is not None and (not _is_int(threads) or threads < 1):
        yield f"device.num_threads={threads!r} must be >= 1, or null for PyTorch's default"
    name = device.name
    if name != "auto" and not available(name):
        yield (
            f"device={name} is not available on this machine "
            "(use device=auto to fall back to what is)"
            if name in ("cpu", "cuda", "mps")
            else f"device.name={name!r} is not one of auto, cpu, cuda, mps"
        )
    elif problem := precision_problem(precision, resolve_device(name)):
        yield problem


def _determinism_problems(cfg: DictConfig) -> Iterator[str]:
    name = cfg.device.name
    if cfg.trainer.deterministic is not True or not (name == "auto" or available(name)):
        return
    try:
        with torch.device("meta"):
            model = build_model(cfg.model)
    except ModelConfigError:
        return  # reported with the model's other problems
    if problem := determinism_problem(model, resolve_device(name)):
        yield problem


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value, in one line."""
    problems = list(_problems(cfg))
    if problems:
        raise ConfigError("Invalid config: " + "; ".join(problems) + ".")


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"epochs": 3}} -> {"trainer.epochs": 3}: the form of MLflow params."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
