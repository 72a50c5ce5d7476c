"""Hydra-configured, reproducible MNIST in plain PyTorch. `from mnist import Classifier` is
the Python API for prediction, loaded on first access so that `import mnist` stays cheap."""

from typing import Any

from mnist.errors import ImageError

__all__ = ["Classifier", "ImageError", "Prediction"]


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "Prediction"):
        from mnist.inference import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'mnist' has no attribute {name!r}")
