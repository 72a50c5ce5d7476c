"""Shared fixtures: small synthetic IDX datasets (tests never need the network) and
composed configs shrunk to seconds, with every output under tmp_path."""

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hypothesis import settings
from omegaconf import DictConfig

from mnist.config import REPO_ROOT
from mnist.data import DataError, ensure_mnist
from mnist.idx import encode_idx

# CI (.ci/run sets CI=true) runs the property tests on a fixed sequence of examples, so
# that whether a change lands does not depend on the draw; local runs keep exploring new
# random examples (and replay the failures they found, from .hypothesis/).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

CONF_DIR = REPO_ROOT / "conf"
TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train.py"


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 28x28 images where each class is a bright block at its own place: learnable
    in a few steps, so tiny runs can show that training works."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, digit in enumerate(labels):
        row, col = 4 + (digit // 5) * 12, 2 + (digit % 5) * 5
        images[i, row : row + 8, col : col + 4] = 255
    return images, labels


def write_synthetic_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(encode_idx(images))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(encode_idx(labels))
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist") / "raw")


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch):
    # A developer's MLFLOW_TRACKING_URI must never receive test runs.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tiny_overrides(data_root: Path, tmp_path: Path) -> list[str]:
    return [
        f"data.root={data_root}",
        "data.verify_checksums=false",
        "data.val_size=100",
        "trainer.epochs=2",
        "trainer.batch_size=50",
        "trainer.eval_batch_size=256",
        "trainer.progress=false",
        "logger.log_model=false",
        "device=cpu",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"paths.mlruns={tmp_path / 'mlruns'}",
    ]


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An initialised MLflow SQLite store: creating the schema takes ~7 s on a small CPU,
    so in-process tests start from a copy (the script tests still create theirs)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tiny_cfg(synthetic_root, tmp_path, empty_mlflow_db) -> Callable[..., DictConfig]:
    """tiny_cfg("model=cnn24k", ...) -> a composed config that trains in about a second."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    return lambda *overrides: compose_config(
        [*tiny_overrides(synthetic_root, tmp_path), *overrides]
    )


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """scripts/<name>.py in a subprocess from the repository root. It inherits the test's
    environment, from which `_local_tracking` has removed MLFLOW_TRACKING_URI."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / f"{name}.py"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_train_script(*args: str) -> subprocess.CompletedProcess:
    return run_script("train", *args)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The real MNIST in the repository's data directory, fetched if needed."""
    try:
        return ensure_mnist(REPO_ROOT / "data" / "MNIST" / "raw")
    except DataError as e:
        pytest.skip(f"real MNIST is not available here: {e}")
