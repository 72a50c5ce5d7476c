"""Validation of a composed training config, run before anything is downloaded, built or
logged, and its flat form for MLflow params."""

import math
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnist.data.augment import augmentation_problems, stored_form
from mnist.data.fetch import root_problem
from mnist.data.tensors import MNIST_TRAIN_SIZE
from mnist.errors import ConfigError, ModelConfigError
from mnist.extras import missing
from mnist.models import build_model
from mnist.models.checks import check_forward
from mnist.paths import REPO_ROOT
from mnist.training.device import (
    MAX_NUM_THREADS,
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
    # The validation split seeds a torch.Generator with the seed itself (mnist/data/tensors.py),
    # which takes seeds below 2**64; the other streams hash it (mnist/seeding.py).
    if not _is_int(cfg.seed) or not 0 <= cfg.seed < 2**64:
        yield f"seed={cfg.seed!r} must be an integer in [0, 2**64)"
    yield from _unknown_key_problems(cfg)
    yield from _trainer_problems(cfg.trainer)
    yield from _data_problems(cfg.data)
    if "augmentation" in cfg:
        yield from augmentation_problems(cfg.augmentation)
    else:  # Hydra drops the group for an empty selection
        yield "augmentation=[] selects no option: use augmentation=none for no augmentation"
    yield from _optimizer_problems(cfg.optimizer)
    model, model_problem = _meta_model(cfg.model)
    if model_problem:
        yield model_problem
    yield from _scheduler_problems(cfg)
    yield from _logger_problems(cfg.logger)
    yield from _device_problems(cfg.device, cfg.trainer.precision)
    yield from _determinism_problems(cfg, model)
    resume = OmegaConf.select(cfg, "sweep.resume", default=False)
    if not isinstance(resume, bool):
        yield f"sweep.resume={resume!r} must be true or false"


# Config sections and the conf/ group that fills each. A key that none of the group's
# options has (added with `+`) would be ignored silently, so it is refused as a typo. The
# keys of `model` and `optimizer` are their `_target_`'s arguments, which their builders check;
# those of `augmentation` its ops' parameters, which the ops check (mnist/data/augment.py).
_SECTION_GROUPS = {
    "trainer": "trainer",
    "data": "dataset",
    "scheduler": "scheduler",
}


def _keys(section: DictConfig) -> set[str]:
    """Dotted keys (`early_stopping.patience`), read without resolving interpolations."""
    return set(flatten(OmegaConf.to_container(section)))


@cache
def _option_keys(group: str) -> dict[str, frozenset[str]]:
    return {
        path.stem: frozenset(_keys(OmegaConf.load(path)))
        for path in (REPO_ROOT / "conf" / group).glob("*.yaml")
    }


def _unknown_key_problems(cfg: DictConfig) -> Iterator[str]:
    """The known keys of a section are those of the option its `name` names (a schedule's
    own), else those of any of the group's options."""
    for section, group in _SECTION_GROUPS.items():
        options = _option_keys(group)
        name = cfg[section].get("name")
        known = options.get(name) if isinstance(name, str) else None
        known = known or frozenset().union(*options.values())
        for key in sorted(_keys(cfg[section]) - known):
            yield f"{section}.{key} is not a key of {section} (known: {', '.join(sorted(known))})"


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
    decay = trainer.ema_decay
    if decay is not None and not (_is_number(decay) and 0 < decay < 1):
        yield f"trainer.ema_decay={decay!r} must be in (0, 1), or null to use the trained weights"


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
    if problem := root_problem(data.root):
        yield problem
        return
    root = Path(data.root)
    existing = next((path for path in (root, *root.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        yield f"data.root={data.root} must be a directory, and {existing} is a file"


def _valid_lr(lr: Any) -> bool:
    return _is_finite(lr) and lr > 0


def _optimizer_problems(optimizer: DictConfig) -> Iterator[str]:
    if not _valid_lr(optimizer.lr):
        yield f"optimizer.lr={optimizer.lr!r} must be a finite number > 0"
        return
    try:  # torch.optim checks the other values (momentum, betas, ...)
        check_optimizer(optimizer)
    except ConfigError as e:  # a foreign _target_, an unknown key
        yield str(e)
    except (TypeError, ValueError) as e:
        yield f"optimizer.* cannot build {optimizer._target_} ({e})"


def _meta_model(model_cfg: DictConfig) -> tuple[nn.Module | None, str | None]:
    """The model built on the meta device and called on a batch of digits there, which
    checks any model without allocating or drawing anything, or None and why it cannot
    be built or run."""
    try:
        with torch.device("meta"):
            model = build_model(model_cfg)
        check_forward(model, model_cfg._target_)
    except ModelConfigError as e:
        return None, str(e)
    return model, None


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


# Float32 weights overflow past 3.4e38, and an optimizer scales the learning rate before it
# applies it (Adam's first step by 1 / (1 - beta1), 10 by default): above this peak, a step
# fails inside torch.optim with a traceback, where a merely too large rate diverges, which
# the trainer stops and reports.
MAX_PEAK_LR = 1e30


def _peak_lr(cfg: DictConfig) -> float:
    """The largest learning rate the schedule reaches (mnist/training/optim.py builds them):
    optimizer.lr times what the schedule multiplies it by."""
    lr, schedule = cfg.optimizer.lr, cfg.scheduler
    if schedule.name == "onecycle":
        return lr * schedule.max_lr_factor
    if schedule.name == "cosine":
        return max(lr, schedule.min_lr)
    if schedule.name == "step":  # stepped after each epoch; the last epoch's rate is the peak
        try:
            return lr * max(schedule.gamma, 1.0) ** ((cfg.trainer.epochs - 1) // schedule.step_size)
        except OverflowError:
            return math.inf
    return lr


def _scheduler_problems(cfg: DictConfig) -> Iterator[str]:
    scheduler = cfg.scheduler
    if scheduler.name not in SCHEDULERS:
        yield f"scheduler.name={scheduler.name!r} is not one of {', '.join(SCHEDULERS)}"
        return
    problems = [
        f"scheduler.{key}={scheduler.get(key)!r} must be {expected} (scheduler={scheduler.name})"
        for key, (valid, expected) in _SCHEDULE_RULES.get(scheduler.name, {}).items()
        if not valid(scheduler.get(key))
    ]
    yield from problems
    epochs = cfg.trainer.epochs
    if problems or not _valid_lr(cfg.optimizer.lr) or not (_is_int(epochs) and epochs >= 1):
        return
    if (peak := _peak_lr(cfg)) > MAX_PEAK_LR:
        yield (
            f"optimizer.lr={cfg.optimizer.lr!r} with scheduler={scheduler.name} peaks at "
            f"{peak:.3g}, above the {MAX_PEAK_LR:.0e} torch.optim can apply to float32 "
            "weights without overflow: lower optimizer.lr (or the schedule's factor)"
        )


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
    if threads is not None and not (_is_int(threads) and 1 <= threads <= MAX_NUM_THREADS):
        yield (
            f"device.num_threads={threads!r} must be an integer between 1 and "
            f"{MAX_NUM_THREADS} (this machine's CPUs), or null for PyTorch's default"
        )
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


def _determinism_problems(cfg: DictConfig, model: nn.Module | None) -> Iterator[str]:
    """`model` is None when it cannot be built, a problem reported with the model's."""
    name = cfg.device.name
    if model is None or cfg.trainer.deterministic is not True:
        return
    if name != "auto" and not available(name):
        return
    if problem := determinism_problem(model, resolve_device(name)):
        yield problem


# Config keys added after runs were stored, each with the value that trains as runs did
# before it existed. A stored config (a last.pt's, a run's config.yaml) that lacks one gets
# it (as_now); a run at that value keeps the params and config.sha256 it had before
# (mnist/tracking/params.py), so compare.py and a resumed sweep still match older runs.
ADDED_KEYS: dict[str, Any] = {"trainer.ema_decay": None}
_ABSENT = object()


def as_now(stored: DictConfig) -> DictConfig:
    """A config a run stored, in today's form: augmentation as ops, the keys added since."""
    stored.augmentation = stored_form(stored.augmentation)
    for key, value in ADDED_KEYS.items():
        if OmegaConf.select(stored, key, default=_ABSENT) is _ABSENT:
            OmegaConf.update(stored, key, value, force_add=True)
    return stored


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
