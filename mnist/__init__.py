"""Hydra-configured, reproducible MNIST in plain PyTorch.

The sub-packages follow the flow of a run: `data` -> `models` -> `training` -> `tracking`
-> `reporting`; `inference` reads what training wrote; `tools` are side commands
(benchmark, photo evaluation, reproduction). `errors`, `paths`, `config`, `context`,
`seeding` and `atomic` are shared by all of them.

`from mnist import Classifier` is the Python API for prediction. It is loaded on first
access, so that `import mnist` (which every submodule import implies) stays cheap."""

from typing import Any

from mnist.errors import ImageError

__all__ = ["Classifier", "ImageError", "Prediction"]


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "Prediction"):
        from mnist.inference import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'mnist' has no attribute {name!r}")
