"""Training on a CUDA GPU, end to end on tiny synthetic data: mixed precision, determinism,
torch.compile, SIGTERM and resume, a GPU checkpoint used on the CPU, and reproduce.py
with a tolerance. Skipped, with the reason, where torch sees no CUDA GPU; run them with
`pytest -m cuda` on a machine that has one."""

import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist import Classifier
from mnist.context import JobContext
from mnist.inference.export import run_export
from mnist.job import run_training
from mnist.tools.reproduce import is_timing, reproduce
from mnist.training.checkpoint import load_checkpoint
from mnist.training.device import precision_problem
from tests.helpers import TRAIN_SCRIPT, compose_config, run_train_script, tiny_overrides
from tests.helpers.images import seven, to_uint8

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False)",
    ),
]

WEIGHTS_TAG = "best.weights_sha256"


def client_of(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def histories(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    names = [name for name in client.get_run(run_id).data.metrics if not is_timing(name)]
    return {
        name: [
            m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        ]
        for name in names
    }


def train(tiny_cfg, tmp_path, name: str, *overrides: str) -> dict:
    return run_training(tiny_cfg("device=cuda", *overrides), JobContext(output_dir=tmp_path / name))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_trains_and_evaluates(tiny_cfg, tmp_path, precision):
    if problem := precision_problem(precision, torch.device("cuda")):
        pytest.skip(problem)
    result = train(tiny_cfg, tmp_path, "run", f"trainer.precision={precision}", "trainer.epochs=3")
    assert result["best/val_acc"] > 0.9 and math.isfinite(result["test/loss"])
    scaler = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["scaler"]
    # fp16 trains through the gradient scaler; bf16 needs none.
    assert (scaler.get("scale", 0) > 0) is (precision == "fp16")
    tags = client_of(tmp_path).get_run(result["run_id"]).data.tags
    assert tags["device"].startswith("cuda") and tags["cudnn.benchmark"] == "true"


def test_deterministic_runs_are_identical(tiny_cfg, tmp_path):
    recipe = ("trainer.deterministic=true", "augmentation=shift_rotate", "model=gap20k")
    first = train(tiny_cfg, tmp_path, "a", *recipe)
    second = train(tiny_cfg, tmp_path, "b", *recipe)
    client = client_of(tmp_path)
    assert histories(client, first["run_id"]) == histories(client, second["run_id"])
    tags = [client.get_run(r["run_id"]).data.tags for r in (first, second)]
    assert tags[0][WEIGHTS_TAG] == tags[1][WEIGHTS_TAG]
    assert tags[0]["torch.deterministic"] == "true" and tags[0]["cudnn.benchmark"] == "false"


def test_compiled_model_trains_and_evaluates_ragged_batches(tiny_cfg, tmp_path):
    result = train(tiny_cfg, tmp_path, "run", "trainer.compile=true", "trainer.eval_batch_size=64",
                   "trainer.test_every_epoch=true")  # fmt: skip
    assert result["best/val_acc"] > 0.9 and math.isfinite(result["test/loss"])


def test_sigterm_then_resume_on_cuda_ends_like_an_uninterrupted_run(
    synthetic_root, tmp_path, tiny_cfg
):
    recipe = ["device=cuda", "trainer.deterministic=true", "trainer.epochs=8",
              "trainer.batch_size=10", "augmentation=shift_rotate", "model=gap20k",
              "seed=5"]  # fmt: skip
    reference = run_training(tiny_cfg(*recipe), JobContext(output_dir=tmp_path / "reference"))
    run_dir = tmp_path / "interrupted"
    command = [sys.executable, str(TRAIN_SCRIPT), *tiny_overrides(synthetic_root, tmp_path),
               *recipe, f"hydra.run.dir={run_dir}"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert load_checkpoint(last)["device"].startswith("cuda")

    resumed = run_train_script(f"trainer.resume={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not bit-exactly" not in resumed.stderr  # same device: no warning
    client = client_of(tmp_path)
    experiment = client.get_experiment_by_name("mnist").experiment_id
    (run,) = [r for r in client.search_runs([experiment]) if r.info.run_id != reference["run_id"]]
    assert run.info.status == "FINISHED"
    assert histories(client, run.info.run_id) == histories(client, reference["run_id"])


def test_a_cuda_checkpoint_predicts_and_exports_on_the_cpu(tiny_cfg, tmp_path):
    train(tiny_cfg, tmp_path, "run", "model=gap20k")
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    classifier = Classifier.load(best)  # on the CPU by default
    assert classifier.device == torch.device("cpu")
    assert classifier.predict(Image.fromarray(to_uint8(1 - seven()))).digit in range(10)
    out = tmp_path / "model.pt"
    export = compose_config([f"ckpt={best}", "format=torchscript", f"out={out}"], "export")
    assert run_export(export, tmp_path / "export") == out and out.stat().st_size > 0


def test_reproduce_with_a_tolerance_passes_on_cuda(tiny_cfg, tmp_path, capsys):
    """cudnn.benchmark may pick other kernels on a rerun: the metrics agree within 1e-3."""
    original = train(tiny_cfg, tmp_path, "original", "augmentation=crop_rotate")
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg = compose_config([f"run_id={original['run_id']}", f"tracking_uri={uri}",
                          "tolerance=1e-3"], "reproduce")  # fmt: skip
    assert reproduce(cfg, tmp_path / "reproduction", run_training)
    assert "PASS: run" in capsys.readouterr().out
