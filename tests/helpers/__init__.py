"""Plain helpers shared by the tests (fixtures live in tests/conftest.py): synthetic
MNIST files, composed configs shrunk to seconds, and scripts run as subprocesses."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mnist.data.idx import encode_idx
from mnist.paths import REPO_ROOT
from mnist.recipes import CONF_DIR  # and recipe=cpu/<model> for every model, as scripts have

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


def tiny_overrides(data_root: Path, tmp_path: Path) -> list[str]:
    """debug=tiny (conf/debug/tiny.yaml, as users run it) on the synthetic data, with every
    output under tmp_path."""
    return [
        "debug=tiny",
        f"data.root={data_root}",
        "data.verify_checksums=false",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"paths.mlruns={tmp_path / 'mlruns'}",
    ]


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def run_script(name: str, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """scripts/<name>.py in a subprocess, from the repository root unless `cwd` says
    otherwise. It inherits the test's environment, from which `_local_tracking` has
    removed MLFLOW_TRACKING_URI."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / f"{name}.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_train_script(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return run_script("train", *args, cwd=cwd)
