"""Checks that make any model, a user's plain `nn.Module` included, fail before a run starts
rather than in its first step: a model needs no checks of its own."""

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from mnist.errors import ConfigError
from mnist.values import is_int, is_number

INPUT_SHAPE = (2, 1, 28, 28)
NUM_CLASSES = 10


def _given(value: Any, path: str = "model") -> Iterator[tuple[str, Any]]:
    """("model.<key>[i]...=value", value) for every value in the arguments."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _given(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _given(item, f"{path}[{index}]")
    else:
        yield f"{path}={value!r}", value


def _number_problem(value: Any, default: Any) -> str | None:
    if not is_number(value):
        return None
    if not math.isfinite(value):
        return "must be a finite number"
    if is_int(default) and isinstance(value, float):
        return f"must be an integer (its default is {default})"
    if isinstance(value, int) and value < 0:
        return "must be >= 0 (a size or a count)"
    return None


def check_arguments(kwargs: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    for key, value in kwargs.items():
        for shown, number in _given(value, f"model.{key}"):
            if problem := _number_problem(number, defaults.get(key)):
                raise ConfigError(f"{shown} {problem}")


def _named(kwargs: Mapping[str, Any], wanted: float) -> str:
    """The arguments holding `wanted`, which made the layer the check found."""
    paths = [
        shown
        for shown, number in _given(kwargs)
        if isinstance(number, type(wanted)) and not isinstance(number, bool) and number == wanted
    ]
    return ", ".join(paths) or "model.*"


def blamed(kwargs: Mapping[str, Any], error: Exception) -> str:
    """The arguments whose values a constructor's error quotes (torch names the value, not
    the argument), else all of them."""
    given = list(_given(kwargs))
    quoted = [shown for shown, number in given if str(number) in str(error).split()]
    return ", ".join(quoted or [shown for shown, _ in given]) or "model.*"


def check_module(model: nn.Module, kwargs: Mapping[str, Any]) -> None:
    """A size of 0 fails in the first forward pass, or trains nothing."""
    for name, parameter in model.named_parameters():
        if parameter.numel() == 0:
            raise ConfigError(
                f"{_named(kwargs, 0)} leaves {name} without weights: sizes must be >= 1"
            )
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and not 0 <= module.p < 1:
            raise ConfigError(
                f"{_named(kwargs, module.p)} makes {name} drop with p={module.p}: "
                "a dropout probability must be in [0, 1)"
            )


def check_forward(model: nn.Module, target: str, hint: str = "check its model.* sizes") -> None:
    """A batch of zeros on the default device (meta: nothing computed) through `model` in its
    mode. Lazy layers (nn.LazyLinear) take their sizes from it. `hint`: what a refusal
    suggests."""
    with torch.no_grad():
        try:
            output = model(torch.zeros(INPUT_SHAPE))
        except Exception as e:  # a user's model may raise anything on a bad size
            first = str(e).strip().partition("\n")[0]
            raise ConfigError(
                f"{target} fails on a batch of digits {INPUT_SHAPE} ({type(e).__name__}: "
                f"{first}); {hint}"
            ) from e
    expected = (INPUT_SHAPE[0], NUM_CLASSES)
    if tuple(getattr(output, "shape", ())) != expected:
        raise ConfigError(
            f"{target} returns {tuple(getattr(output, 'shape', ()))} for a batch of "
            f"{INPUT_SHAPE[0]} digits, not {expected}: {NUM_CLASSES} logits per digit"
        )
