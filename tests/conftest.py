"""Shared fixtures: small synthetic IDX datasets (tests never need the network) and
composed configs shrunk to seconds, with every output under tmp_path."""

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from filelock import FileLock
from hypothesis import settings
from omegaconf import DictConfig
from torch import Tensor

from mnist.data.augment import OPS, Op
from mnist.data.fetch import MNIST_SHA256, ensure_mnist
from mnist.errors import DataError
from mnist.paths import REPO_ROOT
from tests.helpers import compose_config, tiny_overrides, write_synthetic_mnist

# CI (.ci/run sets CI=true) runs the property tests on a fixed sequence of examples, so
# that whether a change lands does not depend on the draw; local runs keep exploring new
# random examples (and replay the failures they found, from .hypothesis/).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist") / "raw")


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch):
    # A developer's MLFLOW_TRACKING_URI (or registry) must never receive test runs, nor one
    # that an earlier test's in-process promote set (MLflow exports both to the environment).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


@pytest.fixture(autouse=True)
def _own_signal_handlers():
    """Each test starts with SIGINT/SIGTERM handled as in a fresh Python (a KeyboardInterrupt,
    the default action) and leaves them so: a handler left behind by earlier code made a
    later test's second SIGINT do nothing."""
    fresh = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    before = {signum: signal.signal(signum, handler) for signum, handler in fresh.items()}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory, request) -> Path:
    """An initialised MLflow SQLite store: creating the schema costs 1.5 s of CPU or more,
    so tests start from a copy (`made_store`) unless a store's creation is what they test. Made
    once per `make test`: pytest-xdist's workers share this run's temporary directory."""
    from mlflow.tracking import MlflowClient

    run_temp = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # a pytest-xdist worker
        run_temp = run_temp.parent  # each worker's is a directory in the run's
    template = run_temp / "mlflow-template"
    template.mkdir(exist_ok=True)
    with FileLock(template / "lock"):
        if not (template / "mlflow.db").is_file():
            MlflowClient(f"sqlite:///{template / 'made.db'}").search_experiments()
            (template / "made.db").rename(template / "mlflow.db")
    return template / "mlflow.db"


@pytest.fixture
def made_store(tmp_path, empty_mlflow_db) -> Path:
    """tmp_path/mlruns, where tiny_overrides put the store, holding a copy of the initialised
    one: for the tests of scripts that are not about a store's creation."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    return tmp_path / "mlruns"


@pytest.fixture
def tiny_cfg(synthetic_root, tmp_path, made_store) -> Callable[..., DictConfig]:
    """tiny_cfg("model=cnn24k", ...) -> a composed config that trains in about a second."""
    return lambda *overrides: compose_config(
        [*tiny_overrides(synthetic_root, tmp_path), *overrides]
    )


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """The real MNIST under the session's tmp directory: copied from the repository's data
    directory where a training run left it (only read there), else fetched, and verified."""
    root = tmp_path_factory.mktemp("real-mnist") / "raw"
    root.mkdir()
    for name in MNIST_SHA256:
        if (REPO_ROOT / "data" / "MNIST" / "raw" / name).is_file():
            shutil.copy(REPO_ROOT / "data" / "MNIST" / "raw" / name, root / name)
    try:
        return ensure_mnist(root)
    except DataError as e:
        pytest.skip(f"real MNIST is not available here: {e}")


@pytest.fixture
def invert_op() -> Iterator[type[Op]]:
    """An augmentation op as a user may write one: a key and `__call__`, no parameters; known
    while the test runs. The classic pipeline has no twin of it."""

    @dataclass(frozen=True)
    class Invert(Op):
        key: ClassVar[str] = "invert"

        def __call__(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
            return 1 - images

    yield Invert
    del OPS["invert"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first: pytest-xdist hands tests out in this order, so the longest start
    early rather than keep one worker busy after the other has finished."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
