"""Hydra-configured, reproducible MNIST in plain PyTorch.

`from mnist import Classifier` is the Python API for prediction. It is loaded on first
access, so that `import mnist` (which every submodule import implies) stays cheap."""

from typing import Any

__all__ = ["Classifier", "ImageError", "Prediction"]


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "Prediction"):
        from mnist import inference

        return getattr(inference, name)
    if name == "ImageError":
        from mnist.preprocess import ImageError

        return ImageError
    raise AttributeError(f"module 'mnist' has no attribute {name!r}")
