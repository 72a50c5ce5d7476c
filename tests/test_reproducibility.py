"""Determinism, crash safety and resume, reproduce.py, and hostile input (issue 6)."""

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import mnist.training.checkpoint as checkpoint_module
from mnist.config import validate_config
from mnist.context import JobContext
from mnist.data.idx import IdxError, parse_idx
from mnist.errors import CheckpointWriteError, ConfigError, TrackingError
from mnist.job import run_training
from mnist.metric_names import VAL_ACC
from mnist.models import build_model
from mnist.paths import REPO_ROOT
from mnist.tools.reproduce import (
    WEIGHTS_TAG,
    compare_runs,
    is_timing,
    passes,
    reproduce,
)
from mnist.training.checkpoint import load_checkpoint, save_checkpoint, state_dict_sha256
from tests.helpers import (
    TRAIN_SCRIPT,
    compose_config,
    run_script,
    run_train_script,
    tiny_overrides,
)
from tests.helpers.checkpoints import RunsCommand


def histories(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    run = client.get_run(run_id)
    return {
        name: [
            m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        ]
        for name in run.data.metrics
        if not is_timing(name)
    }


# Slow: three trainings, two in subprocesses (~30 s on 2 cores).
@pytest.mark.slow
def test_sigterm_then_resume_ends_exactly_like_an_uninterrupted_run(
    synthetic_root, tmp_path, tiny_cfg
):
    """Stopped after the step the signal arrives in, once epoch 1's last.pt exists: 150
    steps (3 epochs of 50) are left to be interrupted in and resumed."""
    recipe = ["trainer.epochs=4", "trainer.batch_size=10", "augmentation=shift_rotate",
              "model=gap20k", "seed=5"]  # fmt: skip
    reference = run_training(tiny_cfg(*recipe), JobContext(output_dir=tmp_path / "reference"))

    run_dir = tmp_path / "interrupted"
    command = [sys.executable, str(TRAIN_SCRIPT), *tiny_overrides(synthetic_root, tmp_path),
               *recipe, f"hydra.run.dir={run_dir}"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert time.monotonic() - stopped_at < 10
    assert f"trainer.resume={last}" in stderr

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist").experiment_id
    killed = [r for r in client.search_runs([experiment]) if r.info.run_id != reference["run_id"]]
    assert [r.info.status for r in killed] == ["KILLED"]

    outputs = tmp_path / "outputs"
    resumed = run_train_script(f"trainer.resume={last}", f"paths.outputs={outputs}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = [r for r in client.search_runs([experiment]) if r.info.run_id != reference["run_id"]]
    assert [(r.info.run_id, r.info.status) for r in runs] == [(killed[0].info.run_id, "FINISHED")]
    assert histories(client, runs[0].info.run_id) == histories(client, reference["run_id"])
    # The run's own log goes on where it stopped; the resume leaves no directory of its own.
    log = (run_dir / "train.log").read_text()
    assert log.index("SIGTERM received") < log.index("Resuming") < log.index("epoch 4/4")
    assert not outputs.exists() or not any(outputs.iterdir())
    tag = "best.weights_sha256"
    assert runs[0].data.tags[tag] == client.get_run(reference["run_id"]).data.tags[tag]


@pytest.mark.slow  # a whole script end to end, ~35 s; CI runs it
def test_reproduce_script_passes_on_a_finished_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg("augmentation=crop_rotate", "seed=11")
    choices = {"model": "fast", "augmentation": "crop_rotate"}
    original = run_training(cfg, JobContext(output_dir=tmp_path / "original", choices=choices))
    result = run_script(
        "reproduce",
        f"run_id={original['run_id']}",
        f"tracking_uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        f"hydra.run.dir={tmp_path / 'reproduction'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PASS: run" in result.stdout and "DIFFERS" not in result.stdout
    assert "best.weights_sha256" in result.stdout and f"{VAL_ACC}[2]" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    copy = next(r for r in runs if r.info.run_id != original["run_id"])
    assert copy.data.tags["reproduced_from"] == original["run_id"]
    # The same params, config-group options included: the two runs compare in the UI.
    assert copy.data.params == client.get_run(original["run_id"]).data.params


def test_with_a_tolerance_reproduce_judges_metrics_and_shows_the_weights_hash(
    tiny_cfg, tmp_path, capsys
):
    """GPU reruns give the same metrics within a tolerance from weights that differ in their
    last bits: with tolerance > 0 the weights hash is information, not the verdict."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    original = run_training(tiny_cfg("seed=11"), JobContext(output_dir=tmp_path / "original"))

    def rerun_with_other_last_bits(cfg, ctx):
        result = run_training(cfg, ctx)
        MlflowClient(uri).set_tag(result["run_id"], WEIGHTS_TAG, "0" * 64)
        return result

    overrides = [f"run_id={original['run_id']}", f"tracking_uri={uri}", "tolerance=1e-3"]
    cfg = compose_config(overrides, config_name="reproduce")
    assert reproduce(cfg, tmp_path / "reproduction", rerun_with_other_last_bits)
    printed = capsys.readouterr().out
    assert "differs (information only)" in printed and "PASS: run" in printed
    client = MlflowClient(uri)
    (copy,) = client.search_runs(
        [client.get_run(original["run_id"]).info.experiment_id],
        f"tags.reproduced_from = '{original['run_id']}'",
    )
    rows = compare_runs(client.tracking_uri, original["run_id"], copy.info.run_id)
    assert passes(rows, 1e-3) and not passes(rows, 0)  # tolerance 0: bit for bit


def test_unreachable_tracking_server_fails_before_anything_else(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    data_root = tmp_path / "never-created"
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"http://127.0.0.1:9 is unreachable"):
        run_training(tiny_cfg(f"data.root={data_root}"), JobContext(output_dir=tmp_path / "o"))
    assert time.monotonic() - started < 10
    assert not data_root.exists()


def test_store_that_cannot_be_created_fails_before_training(tiny_cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = tiny_cfg(f"paths.mlruns={blocker / 'mlruns'}")
    with pytest.raises(TrackingError, match="is a file, not a directory"):
        run_training(cfg, JobContext(output_dir=tmp_path / "o"))
    assert blocker.read_text() == "not a directory"


def test_resume_refuses_a_checkpoint_naming_a_foreign_target(tiny_cfg, tmp_path):
    config = OmegaConf.to_container(tiny_cfg(), resolve=True)
    config["model"] = {"_target_": "os.system", "command": "touch pwned"}
    state = {"model": {}, "progress": {}, "mlflow_run_id": "0" * 32, "config": config}
    path = save_checkpoint(state, tmp_path / "last.pt")
    # Refused by the allowlist of stored configs, before anything is built or written.
    with pytest.raises(ConfigError, match=r"model\._target_='os\.system'"):
        run_training(tiny_cfg(f"trainer.resume={path}"), JobContext(output_dir=tmp_path / "o"))
    assert not (REPO_ROOT / "pwned").exists()


def test_resume_refuses_a_pickle_that_would_run_code_and_says_so(tiny_cfg, tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"progress": {}, "mlflow_run_id": "0" * 32, "payload": RunsCommand()}, path)
    with pytest.raises(ConfigError) as refused:
        run_training(tiny_cfg(f"trainer.resume={path}"), JobContext(output_dir=tmp_path / "o"))
    message = str(refused.value)
    assert f"refused, loading it would unpickle {os.system.__module__}.system" in message
    assert "weights_only" not in message and "\n" not in message
    assert "corrupt" not in message


def test_resume_refuses_a_checkpoint_with_an_incomplete_config(tiny_cfg, tmp_path):
    state = {"model": {}, "progress": {}, "mlflow_run_id": "0" * 32, "config": {"seed": 1}}
    path = save_checkpoint(state, tmp_path / "last.pt")
    with pytest.raises(ConfigError, match="incomplete or invalid"):
        run_training(tiny_cfg(f"trainer.resume={path}"), JobContext(output_dir=tmp_path / "o"))


@pytest.mark.parametrize(
    "model_cfg",
    [
        {"_target_": "subprocess.call", "args": ["true"]},
        {"_target_": "mnist.models.summarize"},
        {"_target_": "mnist.models.ConvNet", "stages": {"_target_": "os.system"}},
        {"_target_": "torch.nn.Linear", "in_features": 1, "out_features": 1},
        {"_target_": "mnist.models.cnn.nn"},  # a module a model file imports, not a class
        {"_target_": "mnist.models.summary.LayerSummary"},  # a class, but no nn.Module
        {"_target_": "mnist.models.cnn.nn.Linear"},
        {"_target_": "mnist.models.os.system"},  # no module of the package: nothing imported
        {"_target_": "mnist.modelsx.ConvNet"},
    ],
)
def test_model_configs_can_only_build_this_packages_models(model_cfg):
    with pytest.raises(ConfigError, match="refusing it"):
        build_model(model_cfg)


def test_a_model_class_is_named_by_its_module_with_no_list_to_register_it_in():
    by_module = build_model({"_target_": "mnist.models.tiny.GAP20k"})
    assert type(by_module) is type(build_model({"_target_": "mnist.models.GAP20k"}))


def test_best_checkpoint_cannot_be_resumed_and_says_why(tiny_cfg, tmp_path):
    path = save_checkpoint({"model": {}, "config": {}}, tmp_path / "best.pt")
    with pytest.raises(ConfigError, match="not a resumable checkpoint"):
        run_training(tiny_cfg(f"trainer.resume={path}"), JobContext(output_dir=tmp_path / "o"))


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    path = save_checkpoint({"weights": torch.ones(3)}, tmp_path / "last.pt")

    def crash_midway(obj, file):
        file.write(b"partial")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_midway)
    with pytest.raises(CheckpointWriteError, match=f"cannot write {path} .Input/output error"):
        save_checkpoint({"weights": torch.zeros(3)}, path)
    assert torch.equal(load_checkpoint(path)["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_weight_hash_sees_every_value_and_ignores_file_layout():
    weights = {"a": torch.arange(4.0), "b": torch.tensor(3)}
    same = {"b": torch.tensor(3), "a": torch.arange(4.0).clone()}
    assert state_dict_sha256(weights) == state_dict_sha256(same)
    changed = {**weights, "a": torch.tensor([0.0, 1.0, 2.0, 3.0000002])}
    assert state_dict_sha256(changed) != state_dict_sha256(weights)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_idx_parser_survives_random_bytes(data):
    try:
        array = parse_idx(data)
    except IdxError:
        return
    assert isinstance(array, np.ndarray)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_idx_parser_refuses_any_truncation(draw):
    from mnist.data.idx import encode_idx

    shape = draw.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    encoded = encode_idx(np.zeros(shape, np.uint8))
    cut = draw.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(IdxError):
        parse_idx(encoded[:cut])


_BASE = compose_config(["device=cpu"])
BAD_VALUES = {
    "trainer.epochs": st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.text()),
    "trainer.batch_size": st.one_of(st.integers(max_value=0), st.booleans(), st.text()),
    "trainer.label_smoothing": st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9)),
    "data.val_size": st.one_of(st.integers(max_value=0), st.integers(min_value=60_000)),
    "optimizer.lr": st.one_of(
        st.floats(max_value=0.0), st.just("fast"), st.sampled_from([float("inf"), float("nan")])
    ),
    # One step of decay would zero every weight (Adam, the base's optimizer: lr x weight_decay).
    "optimizer.weight_decay": st.floats(min_value=1.001 / _BASE.optimizer.lr),
    "trainer.deterministic": st.one_of(st.text(), st.integers(), st.none()),
    "data.stratify": st.one_of(st.text(), st.integers(), st.floats()),
    "augmentation.affine.translate": st.one_of(
        st.floats(min_value=1.0), st.floats(max_value=-0.01)
    ),
    "trainer.precision": st.text().filter(lambda t: t not in ("fp32", "bf16", "fp16")),
}


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(sorted(BAD_VALUES)).flatmap(lambda k: st.tuples(st.just(k), BAD_VALUES[k])))
def test_fuzzed_bad_values_get_one_clear_config_error(key_and_value):
    key, value = key_and_value
    cfg = _BASE.copy()
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert key in str(e.value) and "\n" not in str(e.value)


@st.composite
def random_images(draw) -> np.ndarray:
    height, width = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    shape = (height, width) if channels is None else (height, width, channels)
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # sparse blobs: something digit-like to find
        array = (rng.random(shape) > draw(st.floats(0.5, 0.999))).astype(np.float64)
    else:
        array = rng.random(shape) * draw(st.sampled_from([0.0, 1e-6, 1.0]))
    scale = {np.uint8: 255, np.uint16: 65535}.get(dtype, 1)
    return (array * scale).astype(dtype)


@settings(max_examples=150, deadline=None)
@given(random_images())
@example(  # found by CI: strokes whose residual over the fitted background is never positive
    np.array([[255, 0, 0, 0], [255, 255, 255, 255], [255, 255, 255, 0], [255, 0, 255, 0]], np.uint8)
)
def test_preprocessing_gives_an_mnist_digit_or_a_clean_error(array):
    from mnist.errors import ImageError
    from mnist.inference.digits import to_mnist

    try:
        digit = to_mnist(array)
    except ImageError as e:
        assert str(e)
        return
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
