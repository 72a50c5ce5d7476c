"""Checks of the numbers a model is built from that torch does not make itself: a conv or
linear layer of width 0 builds and fails at its first forward pass with a long traceback,
and nn.Dropout takes NaN. Each model states its own, so that a config value is refused
before a run starts, wherever the model is built from."""

from typing import Any


def check_sizes(**sizes: Any) -> None:
    """Raise ValueError naming the first value that is not an integer >= 1."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")


def check_counts(**counts: Any) -> None:
    """Raise ValueError naming the first value that is not an integer >= 0."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an integer >= 0")


def check_probabilities(**probabilities: Any) -> None:
    """Raise ValueError naming the first value that is not a number in [0, 1) (not NaN)."""
    for name, value in probabilities.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{name}={value!r} must be a number in [0, 1)")
