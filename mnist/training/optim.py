"""Optimizer and learning-rate schedule from the `optimizer` and `scheduler` config groups."""

import inspect
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mnist.errors import ConfigError
from mnist.values import is_finite, is_int

SCHEDULERS = ("none", "step", "onecycle", "cosine", "plateau")

# First-order optimizers, which the training step drives as it is.
_SUPPORTED_OPTIMIZERS = (
    torch.optim.Adadelta, torch.optim.Adagrad, torch.optim.Adam, torch.optim.AdamW,
    torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam, torch.optim.RMSprop,
    torch.optim.SGD,
)  # fmt: skip
# Each by its public and defining path.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    path: cls
    for cls in _SUPPORTED_OPTIMIZERS
    for path in (f"torch.optim.{cls.__name__}", f"{cls.__module__}.{cls.__name__}")
}


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _optimizer_class_and_arguments(
    config: Mapping[str, Any],
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    target = config.get("_target_")
    cls = OPTIMIZERS.get(target) if isinstance(target, str) else None
    if cls is None:
        names = sorted({path.rsplit(".", 1)[1] for path in OPTIMIZERS})
        raise ConfigError(
            f"optimizer._target_={target!r} is not one of the supported optimizers "
            f"(torch.optim.{{{', '.join(names)}}}); refusing to build it"
        )
    kwargs = {key: value for key, value in config.items() if not key.startswith("_")}
    known = [name for name in inspect.signature(cls).parameters if name != "params"]
    if unknown := [key for key in kwargs if key not in known]:  # a `+optimizer.` typo
        raise ConfigError(
            f"optimizer.{unknown[0]} is not an argument of {target} (known: {', '.join(known)})"
        )
    for key, value in kwargs.items():
        if not _plain(value):
            raise ConfigError(
                f"optimizer.{key}={value!r} is not a plain value (a number, true/false, a "
                "string or a list of them); refusing to build the optimizer"
            )
    return cls, kwargs


def build_optimizer(config: Mapping[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """Configs also come from checkpoints and MLflow runs, where Hydra's instantiate would
    call whatever a `_target_` names: only the optimizers above are built, from plain values."""
    cls, kwargs = _optimizer_class_and_arguments(config)
    return cls(model.parameters(), **kwargs)


def check_optimizer(config: Mapping[str, Any]) -> None:
    """Raise what build_optimizer would, without parameters: torch.optim checks the values
    first, and the first optimizer built imports torch._dynamo (seconds). Also refused: a step
    that decays each weight by lr x weight_decay of itself (for the adaptive optimizers, about
    so; Adadelta's first step is lr x sqrt(eps)) at 1 or more, where nothing learned survives."""
    cls, kwargs = _optimizer_class_and_arguments(config)
    try:
        cls([], **kwargs)
    except ValueError as e:
        if "empty parameter list" not in str(e):
            raise
    arguments = {
        name: parameter.default for name, parameter in inspect.signature(cls).parameters.items()
    } | kwargs
    weight_decay, step, what = arguments["weight_decay"], arguments["lr"], "lr"
    if cls is torch.optim.Adadelta:
        step, what = step * math.sqrt(arguments["eps"]), "Adadelta's first step, lr x sqrt(eps)"
    if step * weight_decay >= 1:
        raise ConfigError(
            f"optimizer.weight_decay={weight_decay!r} with optimizer.lr={arguments['lr']!r}: "
            f"one step decays every weight by {step * weight_decay:.3g} of itself ({what} x "
            "weight_decay), which must be below 1, else it wipes out what was learned; lower "
            f"optimizer.weight_decay below {1 / step:g} (or optimizer.lr)"
        )


def optimizer_problems(optimizer: Mapping[str, Any]) -> Iterator[str]:
    """One line for what is wrong with an `optimizer` section, if anything."""
    if not (is_finite(optimizer["lr"]) and optimizer["lr"] > 0):
        yield f"optimizer.lr={optimizer['lr']!r} must be a finite number > 0"
        return
    try:
        check_optimizer(optimizer)
    except ConfigError as e:
        yield str(e)
    except (TypeError, ValueError) as e:
        yield f"optimizer.* cannot build {optimizer['_target_']} ({e})"


@dataclass
class Schedule:
    """A scheduler and when it steps: each batch ("step"), each epoch ("epoch"), or each
    epoch with the validation accuracy ("plateau")."""

    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    interval: str


def build_scheduler(
    config: Mapping[str, Any], optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> Schedule | None:
    """Schedules that span the run (onecycle, cosine) need its length, hence the counts."""
    name, schedulers, total = config["name"], torch.optim.lr_scheduler, epochs * steps_per_epoch
    if name == "step":
        return Schedule(schedulers.StepLR(optimizer, config["step_size"], config["gamma"]), "epoch")
    if name == "onecycle":
        max_lr = [group["lr"] * config["max_lr_factor"] for group in optimizer.param_groups]
        pct_start = config["pct_start"]
        if pct_start * total - 1 == 0:
            # OneCycleLR divides by the warm-up's last step, pct_start * total - 1: the next
            # float up is the same one-step warm-up, without the ZeroDivisionError.
            pct_start = math.nextafter(pct_start, 1.0)
        scheduler = schedulers.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=total, pct_start=pct_start
        )
        return Schedule(scheduler, "step")
    if name == "cosine":
        scheduler = schedulers.CosineAnnealingLR(optimizer, T_max=total, eta_min=config["min_lr"])
        return Schedule(scheduler, "step")
    if name == "plateau":
        scheduler = schedulers.ReduceLROnPlateau(
            optimizer, mode="max", factor=config["factor"], patience=config["patience"]
        )
        return Schedule(scheduler, "plateau")
    return None


# torch checks few of these, some only an epoch into the run.
_SCHEDULE_RULES = {
    "step": {
        "step_size": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "gamma": (lambda v: is_finite(v) and v > 0, "a number > 0"),
    },
    "onecycle": {
        "max_lr_factor": (lambda v: is_finite(v) and v > 0, "a number > 0"),
        "pct_start": (lambda v: is_finite(v) and 0 < v < 1, "a number in (0, 1)"),
    },
    "cosine": {"min_lr": (lambda v: is_finite(v) and v >= 0, "a number >= 0")},
    "plateau": {
        "factor": (lambda v: is_finite(v) and 0 < v < 1, "a number in (0, 1)"),
        "patience": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    },
}


# Above this peak rate (scaled by the optimizer, e.g. Adam's first step by 10) float32
# weights overflow inside torch.optim with a traceback; a merely too large one diverges.
MAX_PEAK_LR = 1e30


def _peak_lr(lr: float, schedule: Mapping[str, Any], epochs: int) -> float:
    if schedule["name"] == "onecycle":
        return lr * schedule["max_lr_factor"]
    if schedule["name"] == "cosine":
        return max(lr, schedule["min_lr"])
    if schedule["name"] == "step":  # stepped after each epoch; the last epoch's rate is the peak
        try:
            return lr * max(schedule["gamma"], 1.0) ** ((epochs - 1) // schedule["step_size"])
        except OverflowError:
            return math.inf
    return lr


def scheduler_problems(scheduler: Mapping[str, Any], lr: Any, epochs: Any) -> Iterator[str]:
    """One line per invalid value of a `scheduler` section, and for a peak rate too high."""
    name = scheduler["name"]
    if name not in SCHEDULERS:
        yield f"scheduler.name={name!r} is not one of {', '.join(SCHEDULERS)}"
        return
    problems = [
        f"scheduler.{key}={scheduler.get(key)!r} must be {expected} (scheduler={name})"
        for key, (valid, expected) in _SCHEDULE_RULES.get(name, {}).items()
        if not valid(scheduler.get(key))
    ]
    yield from problems
    if problems or not (is_finite(lr) and lr > 0) or not (is_int(epochs) and epochs >= 1):
        return
    if (peak := _peak_lr(lr, scheduler, epochs)) > MAX_PEAK_LR:
        yield (
            f"optimizer.lr={lr!r} with scheduler={name} peaks at "
            f"{peak:.3g}, above the {MAX_PEAK_LR:.0e} torch.optim can apply to float32 "
            "weights without overflow: lower optimizer.lr (or the schedule's factor)"
        )
