"""The check a stored config (a checkpoint's, a run's config.yaml) passes before anything is
built from it. An interpolation would read the environment, and a `_target_` naming, say,
shutil.rmtree would run it: only model and optimizer targets on their builders' lists pass."""

from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from mnist.errors import ConfigError
from mnist.models import model_class
from mnist.overrides import interpolations_in
from mnist.training.optim import OPTIMIZERS


def _allowed(where: str, target: Any) -> bool:
    """Only `model` and `optimizer` may hold a `_target_`, one on their builders' lists."""
    if not isinstance(target, str) or where not in ("model", "optimizer"):
        return False
    if where == "optimizer":
        return target in OPTIMIZERS
    try:
        model_class(target)
    except ConfigError:
        return False
    return True


def targets_in(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(where, target) for every `_target_` in `value`, in dicts and lists at any depth."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "_target_":
                yield path or "<top level>", item
            else:
                yield from targets_in(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from targets_in(item, f"{path}[{index}]")


def refuse_unsafe_config(config: Mapping[str, Any] | DictConfig, source: str) -> None:
    """ConfigError if `config` holds an interpolation, or a `_target_` not allowed where it is."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=False)
    if found := next(interpolations_in(config), None):
        where, text = found
        raise ConfigError(
            f"{source}: refusing its config, which holds the interpolation {where}={text!r}: "
            "a stored config is read as written, so it may hold values only"
        )
    for where, target in targets_in(config):
        if not _allowed(where, target):
            raise ConfigError(
                f"{source}: refusing its config, which names {where}._target_={target!r}: "
                "a stored config may only name this package's model classes (model._target_="
                "mnist.models.<module>.<Class>) and torch.optim optimizers "
                "(optimizer._target_), so nothing in it was built"
            )


def first_line(error: Exception) -> str:
    """What OmegaConf or YAML says is wrong, without the lines of context they add below it,
    so that a refusal stays one line."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        return f"{error.problem}, line {mark.line + 1}" if mark else error.problem
    line, where = str(error).strip().partition("\n")[0], getattr(error, "full_key", None)
    return f"{line}, at {where}" if where and where not in line else line


def stored_config(text: str, source: str) -> DictConfig:
    """The config in `text`, a YAML file stored with a run, once refuse_unsafe_config passed
    it. OmegaConf's YAML loader builds no Python object (a !!python tag is an error)."""
    try:
        config = OmegaConf.create(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not a readable YAML config ({first_line(e)})") from e
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{source}: holds a YAML list, not a config (a mapping of keys)")
    refuse_unsafe_config(config, source)
    return config
