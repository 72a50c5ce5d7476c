"""A run's training, validation and test sets as MLflow datasets, each identified by the
SHA-256 of its IDX files and its split settings: runs on the same images show the same one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mnist.data.fetch import MNIST_SHA256, sha256_of

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# MLflow's SQL store keeps digests of up to 36 characters.
DIGEST_LENGTH = 16


def file_checksums(root: Path, verified: bool) -> dict[str, str]:
    """The SHA-256 of each IDX file: the published ones when verified against them."""
    return {name: MNIST_SHA256[name] if verified else sha256_of(root / name)
            for name in MNIST_SHA256}  # fmt: skip


def _digest(profile: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()[:DIGEST_LENGTH]


def dataset_profiles(
    checksums: dict[str, str], data: Any, seed: int, sizes: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """{context: profile} for training, validation and test; the digest is the profile's."""
    split = {
        "split_seed": seed,
        "val_size": data.val_size,
        "stratify": data.stratify,
        "train_subset": data.train_subset,
    }
    files = {part: {name: checksums[name] for name in SPLIT_FILES[part]} for part in SPLIT_FILES}
    return {
        "training": {"images": sizes["training"], "sha256": files["train"], **split},
        "validation": {"images": sizes["validation"], "sha256": files["train"], **split},
        "test": {"images": sizes["test"], "sha256": files["test"]},
    }


def log_datasets(root: Path, data: Any, seed: int, sizes: dict[str, int]) -> None:
    """The active run's inputs, one dataset per context named mnist-<context>; `data`: the
    run's data.* config, `sizes`: images per split."""
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from mnist.tracking.store import retry_when_locked

    checksums = file_checksums(root, data.verify_checksums)
    profiles = dataset_profiles(checksums, data, seed, sizes)
    source = json.dumps({"uri": root.resolve().as_uri()})
    inputs = [
        DatasetInput(
            Dataset(
                f"mnist-{context}", _digest(profile), "local", source, profile=json.dumps(profile)
            ),
            tags=[InputTag("mlflow.data.context", context)],
        )
        for context, profile in profiles.items()
    ]
    run_id = mlflow.active_run().info.run_id
    retry_when_locked(lambda: mlflow.MlflowClient().log_inputs(run_id, datasets=inputs))
