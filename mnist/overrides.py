"""Hydra command-line overrides: `key=value`, `+key=value`, `++key=value` and `~key` name the
same key."""

from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist.errors import ConfigError


def split_override(override: str) -> tuple[str, str]:
    """(key or config group, value) of an override; the value is "" for `~key`."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def override_key(override: str) -> str:
    """The key or config group an override sets, e.g. "optimizer.lr" for "+optimizer.lr=1"."""
    return split_override(override)[0]


def task_overrides(hydra: DictConfig) -> list[str]:
    """The job's command-line overrides as typed (read item by item, OmegaConf would resolve
    `logger.run_name=${oc.env:UNSET}`)."""
    return OmegaConf.to_container(hydra.overrides.task)


def interpolations_in(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, text) of every value that is or holds an interpolation, unresolved."""
    if isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for name, item in items:
            yield from interpolations_in(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, str) and "${" in value:
        yield key, value


def refuse_unresolvable(cfg: DictConfig) -> None:
    """ConfigError naming the first value of the job's config whose interpolation does not
    resolve (`${oc.env:UNSET}`), rather than a traceback where the job first reads it."""
    job = {key: value for key, value in OmegaConf.to_container(cfg).items() if key != "hydra"}
    for key, text in interpolations_in(job):
        try:
            OmegaConf.select(cfg, key)
        except OmegaConfBaseException as e:
            reason = str(e).strip().partition("\n")[0]
            raise ConfigError(
                f"{key}={text!r} does not resolve ({reason}): fix the interpolation, or write "
                f"its text as \\${{...}} to mean the text itself"
            ) from e
