"""Shared behaviour of the entry points in scripts/."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from mnist.config import ConfigError
from mnist.data import DataError
from mnist.models import ModelConfigError
from mnist.tracking import TrackingError
from mnist.trainer import TrainingInterrupted


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """A bad config value or missing data is the user's to fix, not a bug: print one clear
    message and exit with status 2 instead of a traceback."""
    try:
        yield
    except (ConfigError, DataError, TrackingError, ModelConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(130)
