"""Training on Apple Silicon's GPU (MPS), end to end on tiny synthetic data: a whole run
(MPS has no float64), autocast precisions, deterministic training where MPS allows it,
resume, and an MPS checkpoint used on the CPU. Skipped, with the reason, where torch sees
no MPS device; run them with `pytest -m mps` on a Mac."""

import math
import signal

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist import Classifier
from mnist.config import validate_config
from mnist.context import JobContext
from mnist.errors import ConfigError, TrainingInterrupted
from mnist.job import run_training
from mnist.metric_names import TRAIN_LOSS
from mnist.tools.reproduce import TIMING_METRICS
from mnist.training.checkpoint import load_checkpoint
from mnist.training.device import precision_problem
from tests.helpers.images import seven, to_uint8
from tests.helpers.training import run_fit

pytestmark = [
    pytest.mark.mps,
    pytest.mark.skipif(
        not torch.backends.mps.is_available(),
        reason="needs Apple Silicon's GPU (torch.backends.mps.is_available() is False)",
    ),
]

MPS = torch.device("mps")


def untimed(logged) -> list[dict[str, float]]:
    return [{k: v for k, v in epoch.items() if k not in TIMING_METRICS} for epoch in logged]


def test_a_whole_run_trains_tests_and_reports_on_mps(tiny_cfg, tmp_path):
    cfg = tiny_cfg("device=mps", "model=gap20k", "augmentation=crop_rotate",
                   "trainer.test_every_epoch=true")  # fmt: skip
    result = run_training(cfg, JobContext(output_dir=tmp_path / "run"))
    assert result["best/val_acc"] > 0.9 and math.isfinite(result["test/loss"])
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").get_run(result["run_id"])
    assert run.data.tags["device"] == "mps"
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    prediction = Classifier.load(best).predict(Image.fromarray(to_uint8(1 - seven())))
    assert prediction.digit in range(10)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_precisions_train_on_mps(tiny_cfg, tmp_path, precision):
    if problem := precision_problem(precision, MPS):
        pytest.skip(problem)
    result, logged, _ = run_fit(
        tiny_cfg("device=mps", f"trainer.precision={precision}", "trainer.epochs=3"), tmp_path,
        device=MPS,
    )  # fmt: skip
    assert all(math.isfinite(epoch[TRAIN_LOSS]) for epoch in logged)
    assert result.best_val_acc > 0.9


def test_deterministic_training_on_mps_is_refused_with_pooling_and_repeats_without(
    tiny_cfg, tmp_path
):
    with pytest.raises(
        ConfigError, match=r"max_pool2d_with_indices_backward .* no deterministic kernel on mps"
    ):
        validate_config(tiny_cfg("device=mps", "trainer.deterministic=true"))
    recipe = ("device=mps", "trainer.deterministic=true", "model=cnn3_stride")
    _, first, _ = run_fit(tiny_cfg(*recipe), tmp_path / "a", device=MPS)
    _, second, _ = run_fit(tiny_cfg(*recipe), tmp_path / "b", device=MPS)
    assert untimed(first) == untimed(second)


def test_an_interrupted_mps_run_resumes_where_it_stopped(tiny_cfg, tmp_path):
    recipe = ("device=mps", "trainer.deterministic=true", "model=cnn3_stride",
              "trainer.epochs=3", "augmentation=shift_rotate")  # fmt: skip
    _, reference, _ = run_fit(tiny_cfg(*recipe), tmp_path / "reference", device=MPS)

    def stop_after_first_epoch(metrics):
        signal.raise_signal(signal.SIGTERM)  # handled by fit: stop after this epoch

    with pytest.raises(TrainingInterrupted):
        run_fit(tiny_cfg(*recipe), tmp_path / "run", after_epoch=stop_after_first_epoch,
                device=MPS)  # fmt: skip
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["device"] == "mps" and "mps" in state["rng"]
    _, resumed, _ = run_fit(tiny_cfg(*recipe), tmp_path / "run", resume_from=state, device=MPS)
    assert untimed(resumed) == untimed(reference[1:])
