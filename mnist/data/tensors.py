"""MNIST as uint8 tensors on the training device, a seeded validation split, and the checks
of the `data` config group."""

import reprlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mnist.data.fetch import root_problem
from mnist.data.idx import IdxError, read_idx
from mnist.errors import DataError
from mnist.values import boolean_problems, is_int

MNIST_TRAIN_SIZE = 60_000


@dataclass(frozen=True)
class MnistTensors:
    """Images uint8 (N, 28, 28), labels int64."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def _read_pair(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Refused unless every label is a digit: with data.verify_checksums=false nothing else
    checks it, and the split and metrics count by digit."""
    images = read_idx(root / f"{prefix}-images-idx3-ubyte")
    labels_file = root / f"{prefix}-labels-idx1-ubyte"
    labels = read_idx(labels_file)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{prefix} images: expected uint8 (N, 28, 28), got {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{prefix} labels: expected {len(images)} digits 0-9")
    if len(bad := np.setdiff1d(labels, np.arange(10))):  # sorted, each value once
        raise DataError(
            f"{labels_file}: labels must be digits 0-9, found {reprlib.repr(bad.tolist())}; "
            "replace the file with MNIST's (data.verify_checksums=true checks it)"
        )
    return images, labels


def load_mnist(root: str | Path, device: torch.device | str = "cpu") -> MnistTensors:
    root = Path(root)
    try:
        arrays = [*_read_pair(root, "train"), *_read_pair(root, "t10k")]
    except IdxError as e:
        raise DataError(str(e)) from e
    dtypes = (torch.uint8, torch.int64) * 2
    tensors = [torch.from_numpy(a).to(device, d) for a, d in zip(arrays, dtypes, strict=True)]
    return MnistTensors(*tensors)


def split_indices(
    labels: Tensor, val_size: int, seed: int, stratify: bool = True
) -> tuple[Tensor, Tensor]:
    """Shuffled (train, validation) indices, from the labels, seed and `val_size` alone."""
    n = len(labels)
    if not 0 < val_size < n:
        raise DataError(f"data.val_size={val_size} must be between 1 and {n - 1}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    if not stratify:
        return order[val_size:], order[:val_size]
    shuffled_labels = labels.cpu()[order]
    counts = torch.bincount(shuffled_labels, minlength=10).double()
    quota = counts * val_size / n
    take = quota.floor().long()
    # Largest remainders get the leftover slots, so the quotas sum to val_size exactly.
    leftover = val_size - int(take.sum())
    take[torch.argsort(quota - take, descending=True, stable=True)[:leftover]] += 1
    # Rank of each sample among the shuffled samples of its class.
    rank = torch.empty(n, dtype=torch.long)
    for digit in range(10):
        members = (shuffled_labels == digit).nonzero().squeeze(1)
        rank[members] = torch.arange(len(members))
    in_val = rank < take[shuffled_labels]
    return order[~in_val], order[in_val]


@dataclass(frozen=True)
class DataSettings:
    root: str
    val_size: int
    train_subset: int | None = None
    stratify: bool = True
    verify_checksums: bool = True

    def split(self, labels: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        train_idx, val_idx = split_indices(labels, self.val_size, seed, self.stratify)
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        return train_idx.to(labels.device), val_idx.to(labels.device)


def data_problems(data: Mapping[str, Any]) -> Iterator[str]:
    val_size, subset = data["val_size"], data["train_subset"]
    if not is_int(val_size) or not 1 <= val_size < MNIST_TRAIN_SIZE:
        yield (
            f"data.val_size={val_size!r} must be an integer between 1 and "
            f"{MNIST_TRAIN_SIZE - 1} (the validation split comes out of the training set)"
        )
    if subset is not None and (not is_int(subset) or subset < 1):
        yield f"data.train_subset={subset!r} must be an integer >= 1, or null for all images"
    yield from boolean_problems("data", data, ("stratify", "verify_checksums"))
    if problem := root_problem(data["root"]):
        yield problem
        return
    root = Path(data["root"])
    existing = next((path for path in (root, *root.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        yield f"data.root={data['root']} must be a directory, and {existing} is a file"
