"""Batches by indexing resident tensors: no per-sample Python in the training hot path."""

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

# Pixel statistics of the MNIST training set.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def normalize(images: Tensor) -> Tensor:
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
    """Minibatches of `indices`, shuffled by `generator` if given. With `drop_last`, a short
    final batch is dropped unless it would be the only one."""
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
    """One epoch of training input (the trainer's and the benchmark's); the first `skip`
    batches are drawn but not built (resuming mid-epoch)."""
    for step, idx in enumerate(batch_indices(indices, batch_size, shuffle, drop_last=True)):
        if step >= skip:
            yield normalize(transform(to_unit_float(images[idx]))), labels[idx]
