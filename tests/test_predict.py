"""Loading models for prediction (files, MLflow URIs, run ids; refusing what is unsafe or
broken), the Python API, and scripts/predict.py end to end."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist import Classifier, Prediction
from mnist.cli import exit_on_user_error
from mnist.context import JobContext
from mnist.errors import ConfigError
from mnist.inference.digits import to_mnist
from mnist.inference.loading import load_model
from mnist.inference.predict import run_prediction
from mnist.job import run_training
from mnist.models import build_model
from mnist.paths import REPO_ROOT
from mnist.tracking.registry import promote_sweep
from mnist.training.checkpoint import load_checkpoint
from tests.helpers import compose_config, run_script
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
    with pytest.raises(ConfigError) as caught:
        load_model(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    # torch's advice to load with weights_only=False would run the file's code.
    assert "weights_only" not in str(caught.value) and "\n" not in str(caught.value)


def test_mlflow_uris_run_ids_and_the_default_load_the_run_checkpoint(tiny_cfg, tmp_path, capsys):
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
    with pytest.raises(ConfigError, match="cannot fetch its checkpoint"):
        load_model("0" * 32, uri)
    with pytest.raises(ConfigError, match="no MLflow store"):
        load_model(None, f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")

    # A later run with a checkpoint is the latest; the default is the champion, where
    # models:/mnist@champion exists (scripts/promote.py), in the API and in predict.py.
    later = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    client.log_artifact(later, str(tmp_path / "run" / "checkpoints" / "best.pt"), "checkpoints")
    client.set_terminated(later)
    assert later in Classifier.load(tracking_uri=uri).source
    client.create_registered_model("mnist")
    client.create_model_version("mnist", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("mnist", "champion", "1")
    assert run_id in Classifier.load(tracking_uri=uri).source
    assert later in Classifier.load(tracking_uri=uri, registered_model="other").source
    digit_images(tmp_path / "images")
    cfg = compose_config(
        [f"img={tmp_path / 'images'}", f"paths.mlruns={tmp_path / 'mlruns'}"], "predict"
    )
    assert run_prediction(cfg) == 0
    assert f"model: models:/mnist@champion, run {run_id}" in capsys.readouterr().err


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


def test_predict_refuses_a_broken_checkpoint_in_one_line(tmp_path, capsys):
    """In-process, as scripts/predict.py runs it (exit_on_user_error)."""
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    digit_images(tmp_path / "images")
    cfg = compose_config(
        [f"img={tmp_path / 'images'}", f"ckpt={tmp_path / 'broken.pt'}"], "predict"
    )
    with pytest.raises(SystemExit) as exited, exit_on_user_error(cfg):
        run_prediction(cfg)
    assert exited.value.code == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.pt" in lines[0]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from([b"", b"\x80\x02", b"PK\x03\x04"]))
def test_any_bytes_are_a_checkpoint_or_a_clear_refusal(tmp_path_factory, data, prefix):
    # A pickle protocol header or a zip signature first takes the unpickler deeper.
    path = tmp_path_factory.mktemp("bytes") / "model.pt"
    path.write_bytes(prefix + data)
    with pytest.raises(ConfigError, match=r"not a readable checkpoint|not a checkpoint|refused"):
        load_model(path)


def _sweep_child(client, experiment_id, parent, name, val_acc, test_acc, status="FINISHED"):
    """A run of a sweep with a logged model, as training leaves one (without its files)."""
    run = client.create_run(experiment_id, run_name=name, tags={"mlflow.parentRunId": parent})
    model = client.create_logged_model(experiment_id, name="fast", source_run_id=run.info.run_id)
    client.log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, step=1)])
    client.log_batch(run.info.run_id, [Metric("best/val_acc", val_acc, 0, 1),
                                       Metric("test/acc", test_acc, 0, 1)])  # fmt: skip
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _sweep_store(tmp_path, empty_mlflow_db) -> tuple[str, MlflowClient, str, str]:
    """(its URI, a client, the experiment, the parent run) of a new store holding a sweep."""
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("sweep")
    return uri, client, exp, client.create_run(exp, tags={"sweep.dir": "x"}).info.run_id


def test_promote_picks_the_sweep_best_by_validation_never_test(tmp_path, empty_mlflow_db):
    uri, client, exp, parent = _sweep_store(tmp_path, empty_mlflow_db)
    best_val = _sweep_child(client, exp, parent, "a", val_acc=0.99, test_acc=0.95)
    _sweep_child(client, exp, parent, "b", val_acc=0.98, test_acc=0.99)  # better on test only
    _sweep_child(client, exp, parent, "c", val_acc=1.0, test_acc=1.0, status="FAILED")

    promotion = promote_sweep(uri, "sweep", None, "digits")  # the latest sweep

    assert promotion.run.info.run_id == best_val
    version = client.get_model_version_by_alias("digits", "champion")
    assert version.run_id == best_val and str(version.version) == promotion.version
    # The version is the run's logged model, and the model knows it: its page in the UI
    # shows it registered, not "Register model". (A SQLite registry keeps no model_id on
    # the version, MLflow 3.17-3.18: the source names the model.)
    (output,) = client.get_run(best_val).outputs.model_outputs
    assert version.source == f"models:/{output.model_id}"
    registered = json.loads(client.get_logged_model(output.model_id).tags["mlflow.modelVersions"])
    assert registered == [{"name": "digits", "version": version.version}]
    # Promoting again moves nothing and registers nothing new.
    assert promote_sweep(uri, "sweep", parent, "digits").version == promotion.version
    assert len(client.search_model_versions("name = 'digits'")) == 1
    with pytest.raises(ConfigError, match="no such run"):
        promote_sweep(uri, "sweep", "0" * 32, "digits")


# scripts/promote.py with a barrier after its read of the registered versions: each process
# waits there (up to 5 s) for the other, which makes the race a tester hit 1 time in 3 happen
# every time where nothing orders the two promotions.
PROMOTE_AFTER_A_BARRIER = """
import os, runpy, sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient

barrier, script, *args = sys.argv[1:]
search = MlflowClient.search_model_versions

def search_then_wait(self, *a, **kw):
    found = search(self, *a, **kw)
    (Path(barrier) / str(os.getpid())).touch()
    deadline = time.monotonic() + 5
    while len(list(Path(barrier).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return found

MlflowClient.search_model_versions = search_then_wait
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow  # two promote.py processes, each importing MLflow: ~20 s on 2 cores
def test_two_promotions_at_once_register_one_version_and_both_say_so(tmp_path, empty_mlflow_db):
    _, client, exp, parent = _sweep_store(tmp_path, empty_mlflow_db)
    best = _sweep_child(client, exp, parent, "a", val_acc=0.99, test_acc=0.95)
    (tmp_path / "barrier").mkdir()
    command = [
        sys.executable, "-c", PROMOTE_AFTER_A_BARRIER, str(tmp_path / "barrier"),
        str(REPO_ROOT / "scripts" / "promote.py"), f"paths.mlruns={tmp_path}",
        "logger.experiment=sweep", "name=digits",
    ]  # fmt: skip
    processes = [
        subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]

    (version,) = client.search_model_versions("name = 'digits'")
    assert version.run_id == best
    assert client.get_model_version_by_alias("digits", "champion").version == version.version
    for out, _ in outputs:
        assert f"models:/digits@champion -> version {version.version}: run 'a'" in out


def test_text_output_escapes_file_names_that_would_split_or_reorder_a_line(
    checkpoint, tmp_path, capsys
):
    """A newline in a name printed one prediction across two lines; U+202E (right-to-left
    override), printed raw, makes a terminal show the rest of the line reversed; a name
    that is not UTF-8 could not be printed at all."""
    (paper, *_) = digit_images(tmp_path / "drawn")
    names = ["two\nlines.png", "\u202egnp.7.png", "bytes\udcff.png"]
    (tmp_path / "images").mkdir()
    for name in names:
        shutil.copy(paper, tmp_path / "images" / name)
    (tmp_path / "images" / "not\nan image.png").write_text("text")
    cfg = compose_config(
        [f"img={tmp_path / 'images'}", f"ckpt={checkpoint}", "device=cpu"], "predict"
    )
    assert run_prediction(cfg) == 1
    out, err = capsys.readouterr()
    shown = {line.partition(".png: ")[0].rpartition("/")[2] for line in out.splitlines()}
    assert shown == {"two\\nlines", "\\u202egnp.7", "bytes\\udcff"}
    (error,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "not\\nan image.png" in error
    assert all(
        character.isprintable() for character in out.replace("\n", "") + err.replace("\n", "")
    )
