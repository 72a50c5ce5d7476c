"""Loading models for prediction (files, MLflow URIs, run ids; refusing what is unsafe or
broken), the Python API, and scripts/predict.py end to end."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist import Classifier, Prediction
from mnist.context import JobContext
from mnist.errors import CheckpointError
from mnist.inference.digits import to_mnist
from mnist.inference.loading import load_model
from mnist.models import build_model
from mnist.paths import REPO_ROOT
from mnist.training.checkpoint import load_checkpoint
from mnist.training.job import run_training
from tests.helpers import run_script
from tests.helpers.checkpoints import SMALL_CONVNET, RunsCommand, save_model_checkpoint
from tests.helpers.images import bad_files, seven, to_uint8


@pytest.fixture
def checkpoint(tmp_path):
    return save_model_checkpoint(tmp_path / "best.pt")


def digit_images(directory) -> list:
    """Three drawn digits as files: a 7 on paper, a white 7 on black, a transparent 7."""
    directory.mkdir(exist_ok=True)
    ink = seven()
    rgba = np.dstack([np.zeros((*ink.shape, 3)), ink])
    images = {
        "paper.jpg": Image.fromarray(to_uint8(1 - 0.9 * ink)),
        "chalk.png": Image.fromarray(to_uint8(ink)),
        "clear.png": Image.fromarray(to_uint8(rgba)),
    }
    for name, image in images.items():
        image.save(directory / name)
    return sorted(directory / name for name in images)


def same(a: Prediction, b: Prediction) -> bool:
    return a.digit == b.digit and a.probability == pytest.approx(b.probability, abs=1e-5)


def test_classifier_predicts_digits_with_probabilities(checkpoint, tmp_path):
    classifier = Classifier.load(checkpoint)
    files = digit_images(tmp_path / "images")
    one = classifier.predict(files[0])
    assert isinstance(one, Prediction) and 0 <= one.digit <= 9
    assert one.top3[0] == (one.digit, one.probability)
    assert one.top3[0][1] >= one.top3[1][1] >= one.top3[2][1]
    # Every kind of input gives the same answer as its file.
    image = Image.open(files[0])
    as_array = np.asarray(image)
    with open(files[0], "rb") as stream:
        for source in (image, as_array, torch.from_numpy(as_array.copy()), stream):
            assert classifier.predict(source) == one
    batch = classifier.predict_batch(files)
    assert len(batch) == 3 and same(batch[0], one)  # batching changes float rounding only
    assert classifier.predict_batch([]) == []


def test_file_checkpoints_never_import_mlflow(checkpoint):
    code = (
        "import sys; from mnist import Classifier; "
        f"Classifier.load({str(checkpoint)!r}).predict_batch([]); "
        "print('mlflow' in sys.modules, 'torchvision' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


HACK = {"_target_": "os.system", "command": "echo hacked"}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("foreign target", "refusing"),
        ("nested target", "refusing"),
        ("another architecture", "another architecture"),
        ("corrupt", "not a readable checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ("bare state dict", "not a checkpoint of this project"),
        ("pickled object", "refused, loading it would unpickle pathlib.PurePosixPath"),
        ("pickled os call", f"refused, loading it would unpickle {os.system.__module__}.system"),
        ("missing", "no such checkpoint file"),
    ],
)
def test_bad_checkpoints_are_refused_with_a_clear_message(case, message, tmp_path):
    path = tmp_path / "model.pt"
    if case == "foreign target":
        save_model_checkpoint(
            path, {"_target_": "os.system", "command": "echo hacked"}, SMALL_CONVNET
        )
    elif case == "nested target":
        nested = {**SMALL_CONVNET, "hidden": {"_target_": "os.system", "command": "echo hacked"}}
        save_model_checkpoint(path, nested, SMALL_CONVNET)
    elif case == "another architecture":
        save_model_checkpoint(path, {"_target_": "mnist.models.CNN24k"}, SMALL_CONVNET)
    elif case == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(2048))
    elif case == "truncated":
        data = save_model_checkpoint(tmp_path / "good.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "bare state dict":
        torch.save(build_model(SMALL_CONVNET).state_dict(), path)
    elif case == "pickled object":
        torch.save({"model": {}, "config": {}, "payload": pathlib.PurePosixPath("x")}, path)
    elif case == "pickled os call":
        torch.save({"model": {}, "config": {}, "payload": RunsCommand()}, path)
    with pytest.raises(CheckpointError) as caught:
        load_model(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    # torch's advice to load with weights_only=False would run the file's code.
    assert "weights_only" not in str(caught.value) and "\n" not in str(caught.value)


def test_mlflow_uris_run_ids_and_the_default_load_the_run_checkpoint(tiny_cfg, tmp_path):
    result = run_training(tiny_cfg(), JobContext(output_dir=tmp_path / "run"))
    run_id = result["run_id"]
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    expected = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"]
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("digits")
    client.create_model_version("digits", source=f"runs:/{run_id}/model", run_id=run_id)
    for spec in (None, run_id, f"runs:/{run_id}/model", "models:/digits/1"):
        loaded = load_model(spec, uri)
        assert run_id in loaded.source, spec
        weights = loaded.model.state_dict()
        assert all(torch.equal(weights[k], expected[k]) for k in expected), spec
    with pytest.raises(CheckpointError, match="cannot fetch its checkpoint"):
        load_model("0" * 32, uri)
    with pytest.raises(CheckpointError, match="no MLflow store"):
        load_model(None, f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return run_script("predict", *args)


def test_script_predicts_every_good_file_and_names_each_bad_one(checkpoint, tmp_path):
    files = digit_images(tmp_path / "images")
    (tmp_path / "bad").mkdir()
    bad = bad_files(tmp_path / "bad")
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "readme.txt").write_text("nothing to see")
    bad_inputs = [str(p) for p in bad.values() if not p.is_dir()]
    specs = [str(tmp_path / "images"), str(tmp_path / "no_images"), *bad_inputs]
    result = run_predict(
        f"img=[{','.join(specs)}]",
        f"ckpt={checkpoint}",
        "format=json",
        f"save_preprocessed={tmp_path / 'seen'}",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"model: {checkpoint}" in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_path = {record["path"]: record for record in records}
    # The good files are predicted despite the bad ones, as the API predicts them.
    expected = Classifier.load(checkpoint).predict_batch(files)
    for path, prediction in zip(files, expected, strict=True):
        record = by_path[str(path)]
        assert record["error"] is None
        assert record["digit"] == prediction.digit
        assert record["probability"] == pytest.approx(prediction.probability, abs=1e-5)
        assert [t["digit"] for t in record["top3"]] == [d for d, _ in prediction.top3]
        saved = np.asarray(Image.open(tmp_path / "seen" / f"{path.stem}.png"))
        assert np.array_equal(saved, to_mnist(path))
    assert "directory has no images" in by_path[str(tmp_path / "no_images")]["error"]
    for problem, path in bad.items():
        if not path.is_dir():
            assert problem in by_path[str(path)]["error"], problem
            assert by_path[str(path)]["digit"] is None
    assert len(records) == len(files) + 1 + len(bad_inputs)


def test_script_refuses_a_broken_checkpoint_in_one_line(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    digit_images(tmp_path / "images")
    result = run_predict(f"img={tmp_path / 'images'}", f"ckpt={tmp_path / 'broken.pt'}")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.pt" in lines[0]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from([b"", b"\x80\x02", b"PK\x03\x04"]))
def test_any_bytes_are_a_checkpoint_or_a_clear_refusal(tmp_path_factory, data, prefix):
    # A pickle protocol header or a zip signature first takes the unpickler deeper.
    path = tmp_path_factory.mktemp("bytes") / "model.pt"
    path.write_bytes(prefix + data)
    with pytest.raises(
        CheckpointError, match=r"not a readable checkpoint|not a checkpoint|refused"
    ):
        load_model(path)
