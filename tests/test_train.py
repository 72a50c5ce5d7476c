"""End to end on tiny synthetic data, read back from a real local MLflow store."""

import re

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

import mnist.job as job_module
from mnist.context import JobContext
from mnist.errors import TrainingDiverged
from mnist.job import run_training
from mnist.metric_names import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from mnist.training.checkpoint import load_checkpoint
from tests.helpers import run_train_script, tiny_overrides

EPOCH_METRICS = [TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, "lr", "epoch_time_s",
                 "throughput_img_s"]  # fmt: skip
FINAL_METRICS = ["test/acc", "test/loss", "best/val_acc", "best/epoch", "params_count",
                 "macs_per_image", "train_time_s", "test/eval_time_s"]  # fmt: skip
RUN_TAGS = ["git.commit", "git.dirty", "hydra.overrides", "seed", "device", "torch.version",
            "torchvision.version", "cuda.version", "hostname"]  # fmt: skip


def store(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def runs_of(client: MlflowClient, experiment: str = "mnist"):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for info in client.list_artifacts(run_id, path):
        found.add(info.path)
        if info.is_dir:
            found |= artifact_paths(client, run_id, info.path)
    return found


@pytest.mark.slow  # a whole script end to end, ~35 s; CI runs it
def test_multirun_script_logs_one_complete_run_per_job(synthetic_root, tmp_path, made_store):
    overrides = [*tiny_overrides(synthetic_root, tmp_path), "logger.log_model=true"]
    elsewhere = tmp_path / "working_directory"
    elsewhere.mkdir()
    result = run_train_script(
        "-m", *overrides, "model=fast,cnn24k", "trainer.test_every_epoch=true",
        "logger.experiment=sweep", cwd=elsewhere,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Every MLflow call names the store: none is created where the command ran.
    assert list(elsewhere.iterdir()) == []
    # A quiet console: the model summary once per sweep, none of MLflow's notes the user
    # cannot act on, and how to open the comparison at the end.
    console = result.stdout + result.stderr  # Hydra logs to stdout, MLflow to stderr
    assert console.count("Total parameters") == 1
    for note in ("Detected uv project", "pip version", "Pickle", "Downloading artifacts"):
        assert note not in console, note
    assert f"Compare the runs: make ui STORE={tmp_path / 'mlruns'}, then open http" in console
    assert "workflowType=machine_learning" in result.stdout.splitlines()[-1]
    client = store(tmp_path)
    runs = [r for r in runs_of(client, "sweep") if "mlflow.parentRunId" in r.data.tags]
    assert [r.data.tags["model"] for r in runs] == ["fast", "cnn24k"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.info.run_name == run.data.tags["model"]  # the one key the sweep varies
        assert run.data.params["trainer.epochs"] == "2"
        assert run.data.params["data.val_size"] == "100"
        for tag in RUN_TAGS:
            assert run.data.tags[tag], tag
        for name in [*EPOCH_METRICS, "test/acc_epoch"]:
            history = client.get_metric_history(run.info.run_id, name)
            assert [m.step for m in history] == [1, 2], name
        for name in FINAL_METRICS:
            assert name in run.data.metrics, name
        assert 0.0 <= run.data.metrics["test/acc"] <= 1.0
        assert run.data.metrics["best/epoch"] in (1, 2)
        artifacts = artifact_paths(client, run.info.run_id)
        assert {
            "config.yaml", "classification_report.txt", "confusion_matrix.png",
            "training_curves.png", "sample_predictions.png", "augmented_inputs.png",
            "model_summary.txt",
            "checkpoints/best.pt",
            ".hydra/config.yaml", ".hydra/overrides.yaml",
        } <= artifacts  # fmt: skip
        (output,) = run.outputs.model_outputs
        assert client.get_logged_model(output.model_id).name == run.data.tags["model"]
    # The fast model learns the synthetic classes: training does something.
    assert runs[0].data.metrics["best/val_acc"] > 0.5
    # Loadable in MLflow's pytorch flavour, at any batch size.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (tmp_path / "loaded").mkdir()
    model = mlflow.pytorch.load_model(
        f"models:/{runs[0].outputs.model_outputs[0].model_id}",
        dst_path=str(tmp_path / "loaded"),
    )
    assert model(torch.zeros(7, 1, 28, 28)).shape == (7, 10)


def _run_in_process(tiny_cfg, tmp_path, name: str, *overrides: str) -> dict:
    cfg = tiny_cfg(*overrides)
    return run_training(cfg, JobContext(output_dir=tmp_path / name))


def test_same_seed_gives_identical_metrics_and_weights(tiny_cfg, tmp_path):
    augmented = ("augmentation=shift_rotate", "model=gap20k", "seed=3")
    first = _run_in_process(tiny_cfg, tmp_path, "a", *augmented)
    second = _run_in_process(tiny_cfg, tmp_path, "b", *augmented)
    client = store(tmp_path)
    for name in [TRAIN_LOSS, VAL_LOSS, VAL_ACC]:
        a = [m.value for m in client.get_metric_history(first["run_id"], name)]
        b = [m.value for m in client.get_metric_history(second["run_id"], name)]
        assert a == b and len(a) == 2, name
    weights_a = load_checkpoint(tmp_path / "a" / "checkpoints" / "best.pt")["model"]
    weights_b = load_checkpoint(tmp_path / "b" / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    tag = "best.weights_sha256"
    assert (
        client.get_run(first["run_id"]).data.tags[tag]
        == client.get_run(second["run_id"]).data.tags[tag]
    )
    other = _run_in_process(tiny_cfg, tmp_path, "c", *augmented[:-1], "seed=4")
    assert (
        other["best/val_acc"] != first["best/val_acc"] or other["test/loss"] != first["test/loss"]
    )


def test_best_checkpoint_is_chosen_on_validation_and_resumable_state_is_saved(tiny_cfg, tmp_path):
    result = _run_in_process(tiny_cfg, tmp_path, "run", "trainer.epochs=3")
    history = [m.value for m in store(tmp_path).get_metric_history(result["run_id"], VAL_ACC)]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["val_acc"] == max(history) == result["best/val_acc"]
    assert best["epoch"] == history.index(max(history)) + 1
    assert best["config"]["model"]["_target_"] == "mnist.models.ConvNet"
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["progress"]["epoch"] == 4  # the next epoch: training is complete
    assert last["mlflow_run_id"] == result["run_id"]
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(last)


def test_early_stopping_uses_patience_on_validation(tiny_cfg, tmp_path):
    result = _run_in_process(
        tiny_cfg, tmp_path, "run", "trainer.epochs=30", "trainer.early_stopping.patience=1",
        "trainer.early_stopping.min_delta=0.5",
    )  # fmt: skip
    # No epoch can gain 0.5 in accuracy over the first, so the second epoch stops the run.
    assert len(store(tmp_path).get_metric_history(result["run_id"], VAL_ACC)) == 2


def test_a_failing_job_closes_its_run_as_failed(tiny_cfg, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(job_module, "fit", crash)
    with pytest.raises(RuntimeError, match="boom"):
        _run_in_process(tiny_cfg, tmp_path, "run")
    assert mlflow.active_run() is None
    assert [r.info.status for r in runs_of(store(tmp_path))] == ["FAILED"]


def test_a_diverging_run_stops_as_failed_with_a_clear_message(tiny_cfg, tmp_path):
    # A learning rate this large is valid (without weight decay, which lr x weight_decay >= 1
    # refuses), and overflows the weights in the first steps.
    with pytest.raises(TrainingDiverged) as diverged:
        _run_in_process(tiny_cfg, tmp_path, "run", "optimizer=sgd", "optimizer.lr=1e30",
                        "optimizer.weight_decay=0", "scheduler=none")  # fmt: skip
    message = str(diverged.value)
    assert re.match(rf"training diverged: {TRAIN_LOSS} is (nan|-?inf) in epoch 1 ", message)
    assert "(learning rate 1e+30, weight decay 0); lower optimizer.lr or " in message
    assert "optimizer.weight_decay, or set trainer.grad_clip" in message and "\n" not in message
    assert mlflow.active_run() is None
    [run] = runs_of(store(tmp_path))
    assert run.info.status == "FAILED" and TRAIN_LOSS not in run.data.metrics
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


@pytest.mark.parametrize("augmentation", ["none", "shift_rotate"])
def test_the_augmentation_preview_shows_stored_digits_and_their_draws(
    tiny_cfg, synthetic_root, augmentation
):
    from mnist.config import run_settings
    from mnist.data.tensors import load_mnist
    from mnist.job import PREVIEW_DRAWS, augmentation_preview

    cfg = tiny_cfg(f"augmentation={augmentation}")
    data = load_mnist(synthetic_root)
    indices = torch.arange(20, 60)
    originals, draws, description = augmentation_preview(
        run_settings(cfg), data.train_images, data.train_labels, indices
    )
    # The first image of each digit among `indices`, in digit order.
    labels = data.train_labels[indices].tolist()
    first = [20 + labels.index(digit) for digit in sorted(set(labels))]
    assert len(first) >= 8
    assert torch.equal(originals, data.train_images[first].float() / 255)
    assert draws.shape == (len(first), PREVIEW_DRAWS, 28, 28)
    unchanged = torch.isclose(draws, originals[:, None], atol=1e-6).flatten(2).all(2)
    if augmentation == "none":
        assert unchanged.all() and description == "augmentation=none"
    else:
        assert not unchanged.any() and "rotation ±10°" in description
        assert not torch.equal(draws[:, 0], draws[:, 1])  # every draw is a new transform
