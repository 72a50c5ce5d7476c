"""Model families: a model is a class here and a conf/model/<name>.yaml whose `_target_`
names it; nothing else lists models."""

import copy
import importlib
import inspect
import pkgutil
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mnist.errors import ConfigError
from mnist.models.checks import blamed, check_arguments, check_forward, check_module
from mnist.models.cnn import CNN2, ConvNet
from mnist.models.dense import DenseNet
from mnist.models.summary import LayerSummary, ModelSummary, format_summary, summarize
from mnist.models.tiny import CNN24k, GAP20k
from mnist.models.vgg import TinyVGG

__all__ = [
    "CNN2",
    "CNN24k",
    "ConvNet",
    "DenseNet",
    "GAP20k",
    "LayerSummary",
    "ModelSummary",
    "TinyVGG",
    "format_summary",
    "summarize",
]


# mnist.models.<Class> (the classes re-exported above) or mnist.models.<module>.<Class>.
_TARGET = re.compile(rf"{re.escape(__name__)}(?:\.(?P<module>[a-z_][a-z0-9_]*))?\.(?P<cls>\w+)")


def model_class(target: str) -> type[nn.Module]:
    """Any nn.Module class of this package. Configs also come from checkpoints: the name is
    checked as a string, and only this package's modules are imported."""
    match = _TARGET.fullmatch(target)
    modules = {info.name for info in pkgutil.iter_modules(__path__)}
    cls = None
    if match and (match["module"] is None or match["module"] in modules):
        module = importlib.import_module(f"{__name__}.{match['module'] or ''}".rstrip("."))
        cls = getattr(module, match["cls"], None)
    if not (
        isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and cls.__module__.startswith(f"{__name__}.")
    ):
        raise ConfigError(
            f"model _target_ {target!r} is not a model class of this package: name an "
            f"nn.Module class defined in mnist/models/<module>.py as "
            f"mnist.models.<module>.<Class> (e.g. mnist.models.cnn.ConvNet); refusing it"
        )
    return cls


def _nested_targets(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "_target_" in value or any(_nested_targets(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_nested_targets(v) for v in value)
    return False


def build_model(model_cfg: Mapping[str, Any]) -> nn.Module:
    """A `conf/model` config's model. Loading a checkpoint must not run code: only this
    package's classes are built, with plain keyword arguments (no Hydra instantiate)."""
    target = str(model_cfg.get("_target_", ""))
    kwargs = {k: v for k, v in model_cfg.items() if not k.startswith("_")}
    cls = model_class(target)
    if _nested_targets(kwargs):
        raise ConfigError(f"model config for {target} nests a _target_; refusing it")
    known = inspect.signature(cls).parameters
    if unknown := [key for key in kwargs if key not in known]:  # a `+model.` typo
        raise ConfigError(
            f"model.{unknown[0]} is not an argument of {target} (known: {', '.join(known)})"
        )
    check_arguments(kwargs, {key: parameter.default for key, parameter in known.items()})
    try:
        model = cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. model.dropout=2
        raise ConfigError(f"cannot build {target} from {blamed(kwargs, e)} ({e})") from e
    if any(nn.parameter.is_lazy(parameter) for parameter in model.parameters()):
        # Lazy layers take their sizes from a first batch. In eval mode it draws nothing but
        # their weights (from the seeded generator) and changes no statistic.
        check_forward(model.eval(), target)
        model.train()
    check_module(model, kwargs)
    return model


CHANNELS_LAST_HINT = (
    "with trainer.channels_last=true (the default) its convolutions give channels-last "
    "tensors: flatten them with torch.flatten or .reshape rather than .view, or set "
    "trainer.channels_last=false"
)


def built_on_meta(model_cfg: Mapping[str, Any], channels_last: bool = False) -> nn.Module:
    """Built and called on the meta device as training calls it (`channels_last`: its weights
    in that memory format), which checks any model without allocating or drawing anything."""
    target = model_cfg["_target_"]
    with torch.device("meta"):
        model = build_model(model_cfg)
        check_forward(model, target)
    if channels_last:
        # A CPU or GPU convolution with channels-last weights gives channels-last outputs
        # (which .view refuses); a meta one keeps the input's format. So these calls are on
        # the CPU, with weights left uninitialized and in eval mode: nothing drawn.
        on_cpu = copy.deepcopy(model).to_empty(device="cpu").eval()
        try:
            check_forward(on_cpu, target)
        except ConfigError:  # not the memory format's doing (say, a tensor kept on meta)
            return model
        check_forward(on_cpu.to(memory_format=torch.channels_last), target, CHANNELS_LAST_HINT)
    return model
