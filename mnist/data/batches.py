"""Batches by indexing resident tensors, so no per-sample Python runs in the training hot
path: uint8 images to normalised floats, shuffled minibatches, one epoch of training input."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

# Pixel statistics of the MNIST training set; every model input is normalised with them.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def normalize(images: Tensor) -> Tensor:
    """Float images in [0, 1] -> the model's input scale."""
    return (images - MNIST_MEAN) / MNIST_STD


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def batch_indices(
    indices: Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """Minibatches of `indices`, reshuffled by `generator` when one is given. With
    `drop_last`, a short final batch is dropped unless it would be the only one."""
    if generator is not None:
        indices = indices[torch.randperm(len(indices), generator=generator).to(indices.device)]
    stop = len(indices)
    if drop_last and stop >= batch_size:
        stop -= stop % batch_size
    for start in range(0, stop, batch_size):
        yield indices[start : start + batch_size]


def training_batches(
    images: Tensor,
    labels: Tensor,
    indices: Tensor,
    batch_size: int,
    shuffle: torch.Generator,
    transform: Callable[[Tensor], Tensor],
    skip: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of the training hot path, shared by the trainer and the benchmark:
    shuffled full batches, `transform`ed (augmentation) in [0, 1], then normalised.
    The first `skip` batches are drawn but not built (resuming mid-epoch)."""
    for step, idx in enumerate(batch_indices(indices, batch_size, shuffle, drop_last=True)):
        if step >= skip:
            yield normalize(transform(to_unit_float(images[idx]))), labels[idx]
