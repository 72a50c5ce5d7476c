"""Model families; each `conf/model/<name>.yaml` points its `_target_` at a class here."""

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnist.errors import ModelConfigError, UnsafeModelConfig
from mnist.models.cnn import CNN2, ConvNet
from mnist.models.dense import DenseNet
from mnist.models.summary import LayerSummary, ModelSummary, format_summary, summarize
from mnist.models.tiny import CNN24k, GAP20k
from mnist.models.vgg import TinyVGG

__all__ = [
    "CNN2",
    "MODELS",
    "MODEL_TARGETS",
    "CNN24k",
    "ConvNet",
    "DenseNet",
    "GAP20k",
    "LayerSummary",
    "ModelConfigError",
    "ModelSummary",
    "TinyVGG",
    "UnsafeModelConfig",
    "build_model",
    "format_summary",
    "summarize",
]


MODELS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (CNN2, CNN24k, ConvNet, DenseNet, GAP20k, TinyVGG)
}
# The `_target_`s a model config may name: each class by its public and its defining path.
MODEL_TARGETS: dict[str, type[nn.Module]] = {
    path: cls
    for name, cls in MODELS.items()
    for path in (f"mnist.models.{name}", f"{cls.__module__}.{name}")
}


def _nested_targets(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "_target_" in value or any(_nested_targets(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_nested_targets(v) for v in value)
    return False


def build_model(model_cfg: Mapping[str, Any]) -> nn.Module:
    """Instantiate a `conf/model` config. Configs also come from checkpoints, and loading a
    checkpoint must not be able to run code, so only this package's model classes are
    built, with plain keyword arguments (no nested `_target_`, no Hydra instantiate)."""
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    target = str(model_cfg.get("_target_", ""))
    kwargs = {k: v for k, v in model_cfg.items() if not k.startswith("_")}
    cls = MODEL_TARGETS.get(target)
    if cls is None:
        raise UnsafeModelConfig(
            f"model _target_ {target!r} is not one of this package's models "
            f"(mnist.models.{{{', '.join(MODELS)}}}); refusing to instantiate it"
        )
    if _nested_targets(kwargs):
        raise UnsafeModelConfig(f"model config for {target} nests a _target_; refusing it")
    known = inspect.signature(cls).parameters
    if unknown := [key for key in kwargs if key not in known]:  # a `+model.` typo
        raise ModelConfigError(
            f"model.{unknown[0]} is not an argument of {target} (known: {', '.join(known)})"
        )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. model.dropout=2
        raise ModelConfigError(f"cannot build {target} from model.* ({e})") from e
