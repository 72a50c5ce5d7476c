"""Optional features ship as packaging extras (pyproject.toml); one whose extra is missing is
refused in one line naming what to install (an inexact sync: a plain `uv sync --extra`
removes every extra it does not name)."""

import importlib
import importlib.util
from types import ModuleType

from mnist.errors import ConfigError


def _message(module: str, extra: str, feature: str) -> str:
    return (
        f"{feature} needs the optional '{extra}' dependencies ({module} is not installed): "
        f"uv sync --inexact --extra {extra}  (or pip install -e '.[{extra}]')"
    )


def missing(module: str, extra: str, feature: str) -> str | None:
    """Why `feature` cannot run, found without importing anything; None if it can."""
    return None if importlib.util.find_spec(module) else _message(module, extra, feature)


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`module`, imported; ConfigError naming the extra when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(_message(e.name or module, extra, feature)) from e
