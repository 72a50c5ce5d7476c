"""Tests on the real MNIST (marked slow): fetched into data/ on first use, skipped with the
reason when no source can provide it."""

import pytest
from mlflow.tracking import MlflowClient

from mnist.data.fetch import MNIST_SHA256, sha256_of
from tests.helpers import run_train_script

pytestmark = pytest.mark.slow


def test_fetched_files_match_the_published_checksums(mnist_root):
    for name, digest in MNIST_SHA256.items():
        assert sha256_of(mnist_root / name) == digest


def test_default_model_reaches_98_5_percent_in_one_epoch(mnist_root, tmp_path):
    result = run_train_script(
        f"data.root={mnist_root}",
        "trainer.epochs=1",
        "trainer.progress=false",
        "logger.log_model=false",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"paths.mlruns={tmp_path / 'mlruns'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/acc"] >= 0.985
