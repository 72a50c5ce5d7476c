"""Shared behaviour of the entry points in scripts/. Imports only mnist.errors and
mnist.paths, so that Hydra answers --help and --cfg before torch is ever imported."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from mnist import paths  # noqa: F401  (registers the ${repo_root:} resolver the configs use)
from mnist.errors import (
    ConfigError,
    DataError,
    ModelConfigError,
    SearchInterrupted,
    TrackingError,
    TrainingInterrupted,
)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """A bad config value or missing data is the user's to fix, not a bug: print one clear
    message and exit with status 2 instead of a traceback."""
    try:
        yield
    except (ConfigError, DataError, TrackingError, ModelConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (TrainingInterrupted, SearchInterrupted) as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(130)
