"""scripts/evaluate.py and scripts/photo_eval.py on the synthetic dataset, reading back a
real local MLflow store; photo renderings decoded as predict.py would read them."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist.context import JobContext
from mnist.data.tensors import load_mnist
from mnist.errors import ConfigError
from mnist.inference.digits import to_mnist
from mnist.inference.evaluate_checkpoints import run_evaluation, shifted
from mnist.job import run_training
from mnist.models import build_model
from mnist.tools.photo_eval import STYLES, photo_digits, render, run_photo_eval
from mnist.training.checkpoint import save_checkpoint
from mnist.training.evaluation import evaluate
from tests.helpers import CONF_DIR
from tests.helpers.checkpoints import SMALL_CONVNET, save_model_checkpoint
from tests.helpers.images import seven, to_uint8


def compose_named(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def test_shifted_moves_images_and_fills_with_zeros():
    images = torch.arange(1, 10, dtype=torch.uint8).reshape(1, 3, 3)
    assert shifted(images, 1, 0)[0].tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]
    assert shifted(images, 0, -1)[0].tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]
    assert torch.equal(shifted(images, 0, 0), images)


@pytest.mark.parametrize("tta", [False, True])
def test_evaluation_writes_reports_and_logs_a_run(tta, synthetic_root, tmp_path, empty_mlflow_db):
    checkpoint = save_model_checkpoint(tmp_path / "best.pt")
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    cfg = compose_named("evaluate", [
        f"ckpt={checkpoint}", f"data.root={synthetic_root}", "data.verify_checksums=false",
        f"paths.mlruns={tmp_path / 'mlruns'}", "device=cpu", "log=true", f"tta={tta}",
    ])  # fmt: skip
    out = tmp_path / "eval"
    metrics = run_evaluation(cfg, JobContext(output_dir=out))
    assert 0 <= metrics["test/acc"] <= 1 and metrics["test/loss"] > 0
    assert metrics["test/errors"] == round((1 - metrics["test/acc"]) * 200)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    report = (out / "classification_report.txt").read_text()
    assert "precision" in report and "macro avg" in report
    for png in ("confusion_matrix.png", "misclassified.png"):
        assert Image.open(out / png).size[0] > 100
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist-evaluate")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert run.data.params["tta"] == str(tta)
    assert run.data.params["trained.model._target_"] == "mnist.models.ConvNet"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"classification_report.txt", "confusion_matrix.png", "metrics.json"} <= logged


def test_an_ensemble_averages_its_members_softmax_and_reports_each(
    synthetic_root, tmp_path, empty_mlflow_db
):
    paths, models = [], []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        models.append(build_model(SMALL_CONVNET).eval())
        state = {"model": models[-1].state_dict(), "config": {"model": SMALL_CONVNET, "seed": seed}}
        paths.append(save_checkpoint(state, tmp_path / f"seed{seed}.pt"))
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    cfg = compose_named("evaluate", [
        f"ckpt=[{','.join(map(str, paths))}]", f"data.root={synthetic_root}",
        "data.verify_checksums=false", f"paths.mlruns={tmp_path / 'mlruns'}", "device=cpu",
        "log=true",
    ])  # fmt: skip
    out = tmp_path / "eval"
    metrics = run_evaluation(cfg, JobContext(output_dir=out))

    data = load_mnist(synthetic_root)
    members = [evaluate(m, data.test_images, data.test_labels, 64, "cpu") for m in models]
    mean = torch.stack([m.probabilities for m in members]).mean(0)
    expected = (mean.argmax(1) == data.test_labels).double().mean().item()
    assert metrics["test/acc"] == pytest.approx(expected)
    for i, member in enumerate(members):
        assert metrics[f"member{i}/test/acc"] == pytest.approx(member.accuracy)
    table = (out / "members.md").read_text()
    assert all(str(path) in table for path in paths)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-evaluate").experiment_id])
    assert run.info.run_name == "evaluate ensemble" and run.data.params["members"] == "3"
    assert run.data.params["member2.checkpoint"] == str(paths[2])
    assert "members.md" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_an_empty_ensemble_is_refused_before_anything_is_written(tmp_path):
    cfg = compose_named("evaluate", ["ckpt=[]", f"paths.mlruns={tmp_path / 'mlruns'}"])
    with pytest.raises(ConfigError, match="names no model"):
        run_evaluation(cfg, JobContext(output_dir=tmp_path / "eval"))
    assert not list(tmp_path.iterdir())


def test_every_photo_style_decodes_to_the_digit_it_shows():
    # MNIST-like digits: drawn 7s of two stroke widths, through the preprocessing.
    images = np.stack([to_mnist(to_uint8(seven(scale=s))) for s in (1.0, 0.6, 1.4)])
    for style in STYLES:
        rng = np.random.default_rng(0)
        photo = Image.open(io.BytesIO(render(images[0], style, rng)))
        assert photo.format in ("PNG", "JPEG")
        digits = photo_digits(images, style, seed=0)
        assert digits.shape == (3, 28, 28) and digits.dtype == np.uint8
        for digit, image in zip(digits, images, strict=True):
            clean = to_mnist(image).ravel().astype(float)
            assert np.corrcoef(digit.ravel().astype(float), clean)[0, 1] > 0.8, style
    assert np.array_equal(photo_digits(images, "paper", 0), photo_digits(images, "paper", 0))


def test_photo_eval_reports_each_style_next_to_the_originals(synthetic_root, tmp_path):
    checkpoint = save_model_checkpoint(tmp_path / "best.pt")
    cfg = compose_named("photo_eval", [
        f"ckpt={checkpoint}", f"data.root={synthetic_root}", "data.verify_checksums=false",
        "n=6", "styles=[paper,transparent_png]",
    ])  # fmt: skip
    rows = run_photo_eval(cfg, tmp_path / "out")
    assert [row["images"] for row in rows] == [
        "original 28x28 MNIST", "paper", "transparent_png", "all photo styles",
    ]  # fmt: skip
    table = (tmp_path / "out" / "photo_eval.md").read_text()
    assert all(row["images"] in table for row in rows)
    with pytest.raises(ValueError, match="styles"):
        run_photo_eval(compose_named("photo_eval", ["styles=[watercolour]"]), tmp_path)


@pytest.mark.slow
def test_real_test_digits_survive_every_photo_style(mnist_root):
    images = load_mnist(mnist_root).test_images[:30].numpy()
    originals = np.stack([to_mnist(image) for image in images]).reshape(30, -1).astype(float)
    for style in STYLES:
        photos = photo_digits(images, style, seed=0).reshape(30, -1).astype(float)
        similarity = [np.corrcoef(a, b)[0, 1] for a, b in zip(photos, originals, strict=True)]
        assert np.mean(similarity) > 0.8, style  # the marker style thickens strokes


def test_split_val_evaluates_the_validation_images_the_run_held_out(tiny_cfg, tmp_path):
    """The validation accuracy a run chose its best checkpoint by, recomputed from that
    checkpoint alone: the same images (its seed's split), the same model, moving average
    included."""
    cfg = tiny_cfg("seed=3", "trainer.epochs=3", "trainer.ema_decay=0.9")
    result = run_training(cfg, JobContext(output_dir=tmp_path / "run"))
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    evaluated = {}
    for split in ("val", "test"):
        eval_cfg = compose_named("evaluate", [
            f"ckpt={best}", f"split={split}", f"data.root={cfg.data.root}",
            "data.verify_checksums=false", f"paths.mlruns={tmp_path / 'mlruns'}", "device=cpu",
        ])  # fmt: skip
        evaluated.update(run_evaluation(eval_cfg, JobContext(output_dir=tmp_path / split)))
    assert evaluated["val/acc"] == result["best/val_acc"]
    assert evaluated["val/errors"] == round((1 - evaluated["val/acc"]) * 100)
    assert evaluated["test/acc"] == result["test/acc"]


def test_split_val_refuses_an_ensemble_of_different_validation_splits(synthetic_root, tmp_path):
    """Each seed holds out other images, which the other seeds trained on."""
    config = {"model": SMALL_CONVNET, "data": {"val_size": 100, "stratify": True}}
    paths = [
        save_model_checkpoint(tmp_path / f"seed{seed}.pt", config={**config, "seed": seed})
        for seed in (0, 1)
    ]
    cfg = compose_named("evaluate", [
        f"ckpt=[{','.join(map(str, paths))}]", "split=val", f"data.root={synthetic_root}",
        f"paths.mlruns={tmp_path / 'mlruns'}", "device=cpu",
    ])  # fmt: skip
    with pytest.raises(ConfigError, match="held out different validation images"):
        run_evaluation(cfg, JobContext(output_dir=tmp_path / "eval"))
    assert not (tmp_path / "eval").exists()
