"""What a run looks like in MLflow, read back from a real local store: its name in a sweep,
params that compare, its datasets, its model (pt2, loadable without this package), and
system metrics."""

import json
import os
import site
import subprocess
import sys
import threading

import pytest
from hydra import initialize_config_dir
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mnist import job
from mnist.context import JobContext
from mnist.data.fetch import sha256_of
from mnist.job import run_training
from mnist.recipes import model_names
from mnist.sweeps.callback import swept_overrides
from mnist.tracking.runs import MODEL_CONTRACT
from tests.helpers import CONF_DIR

EXCLUDED = ["paths.outputs", "data.root", "logger.experiment"]


def sweep_config(command_line: list[str], preset: dict[str, str] | None = None):
    return OmegaConf.create({"hydra": {
        "overrides": {"task": command_line},
        "sweeper": {"params": preset or {}},
        "job": {"config": {"override_dirname": {"exclude_keys": EXCLUDED}}},
    }})  # fmt: skip


def test_the_swept_keys_come_from_the_command_line_then_the_preset():
    config = sweep_config(
        ["data.train_subset=5000", "model=linear,cnn24k,fast", "seed=range(2)",
         "data.root=/a,/b", "optimizer.lr=choice(0.1,0.01)"],
        {"model": "linear,mlp", "trainer.epochs": "1,2"},
    )  # fmt: skip
    # Fixed keys and where-to-write keys name no difference; the command line beats the preset.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert swept_overrides(config) == {
            "model": "linear,cnn24k,fast",
            "seed": "0,1",
            "optimizer.lr": "0.1,0.01",
            "trainer.epochs": "1,2",
        }


def test_a_glob_sweep_is_listed_as_the_options_it_matches():
    # experiment=arch_table sweeps model=glob(*): every conf/model option.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        swept = swept_overrides(sweep_config([], {"model": "glob(*)", "seed": "0,1"}))
    assert swept == {"model": ",".join(model_names()), "seed": "0,1"}


@pytest.mark.parametrize(
    ("swept", "overrides", "name"),
    [
        (["model", "seed"], ["data.train_subset=5000", "model=fast", "seed=0"], "fast seed=0"),
        (["optimizer.lr", "model"], ["model=cnn3", "optimizer.lr=0.1"], "cnn3 optimizer.lr=0.1"),
        (["seed"], ["model=cnn4", "seed=1"], "cnn4 seed=1"),
        # A single run: what it overrides that can change its numbers, not where it wrote.
        (
            [],
            ["data.train_subset=3000", "device=cpu", "trainer.epochs=2", "paths.outputs=/o"],
            "fast data.train_subset=3000 cpu trainer.epochs=2",
        ),
        (
            [],
            ["model=cnn4", "optimizer.lr=0.0031234", "trainer.progress=true"],
            "cnn4 optimizer.lr=0.00312",
        ),
        ([], ["augmentation=shift_rotate"], "fast affine(rot10,shift0.1)"),
        ([], [], "fast"),
    ],
)
def test_a_run_is_named_by_its_model_augmentation_and_what_else_differs(
    swept, overrides, name, tmp_path
):
    """Single runs and a sweep's jobs alike; a config group by its option alone."""
    chosen = dict(override.split("=", 1) for override in overrides)
    augmentation = "affine(rot10,shift0.1)" if "augmentation" in chosen else "none"
    ctx = JobContext(
        output_dir=tmp_path,
        overrides=overrides,
        choices={"model": chosen.get("model", "fast"), "optimizer": "adam",
                 "augmentation": augmentation, "device": chosen.get("device", "auto")},
        swept_keys=swept,
    )  # fmt: skip
    assert ctx.run_name == name


def test_a_run_logs_params_that_compare_its_datasets_and_system_metrics(
    tiny_cfg, synthetic_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    # A tiny run can end before MLflow's monitor takes its first sample (a fast CPU did):
    # the run waits, before its reports, until the real monitor has published one.
    sampled = threading.Event()
    publish, write_reports = SystemMetricsMonitor.publish_metrics, job.write_training_reports

    def publish_and_signal(monitor, metrics):
        publish(monitor, metrics)
        sampled.set()

    def write_reports_once_sampled(*args, **kwargs):
        assert sampled.wait(timeout=300), "MLflow's system-metrics monitor never published"
        return write_reports(*args, **kwargs)

    monkeypatch.setattr(SystemMetricsMonitor, "publish_metrics", publish_and_signal)
    monkeypatch.setattr(job, "write_training_reports", write_reports_once_sampled)
    cfg = tiny_cfg("optimizer=sgd", "logger.system_metrics=true", "data.train_subset=300")
    ctx = JobContext(output_dir=tmp_path / "run", choices={"model": "fast", "optimizer": "sgd",
                     "scheduler": "onecycle", "augmentation": "none", "device": "cpu"})  # fmt: skip
    result = run_training(cfg, ctx)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(result["run_id"])

    params = run.data.params
    groups = ("model", "optimizer", "scheduler", "augmentation", "device")
    assert [params[group] for group in groups] == ["fast", "sgd", "onecycle", "none", "cpu"]
    for key in params:
        assert not key.startswith(("paths.", "logger.")), key
        assert not key.endswith(("_target_", "_partial_")), key
        assert key not in ("data.root", "trainer.progress", "scheduler.name"), key
        assert str(tmp_path) not in params[key], key
    experiment = run.info.experiment_id
    assert (
        client.search_runs([experiment], "params.model = 'fast'")[0].info.run_id == run.info.run_id
    )
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # What compare.py says of the model, recorded by the run that trained it.
    assert (run.data.tags["model.conv_layers"], run.data.tags["model.pooling"]) == ("3", "MaxPool")

    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    profiles = {context: json.loads(dataset.profile) for context, dataset in inputs.items()}
    assert profiles["training"]["images"] == 300 and profiles["validation"]["images"] == 100
    assert profiles["test"]["images"] == 200
    assert profiles["training"]["train_subset"] == 300 and profiles["training"]["split_seed"] == 0
    # verify_checksums=false: the digests come from the files actually read.
    for name, sha in {**profiles["training"]["sha256"], **profiles["test"]["sha256"]}.items():
        assert sha == sha256_of(synthetic_root / name)
    assert len({dataset.digest for dataset in inputs.values()}) == 3

    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)


# Slow: exporting and registering the model, then a second interpreter that imports torch
# and MLflow (a minute and more on a busy 2-core machine).
@pytest.mark.slow
def test_the_model_is_pt2_linked_to_its_metrics_and_loads_without_this_package(tiny_cfg, tmp_path):
    cfg = tiny_cfg("logger.log_model=true", "logger.register=digits", "trainer.epochs=1")
    result = run_training(cfg, JobContext(output_dir=tmp_path / "run", choices={"model": "fast"}))
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(result["run_id"])
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "fast" and model.tags["mlflow.note.content"] == MODEL_CONTRACT
    linked = {m.key: m.value for m in model.metrics}
    assert linked["test/acc"] == run.data.metrics["test/acc"]
    assert linked["best/val_acc"] == run.data.metrics["best/val_acc"]
    artifacts = {a.path for a in client.list_logged_model_artifacts(output.model_id, "data")}
    assert artifacts == {"data/model.pt2"}  # torch.export's format, no pickle
    version = client.get_model_version("digits", "1")
    assert version.run_id == run.info.run_id and version.description == MODEL_CONTRACT

    # -I -S: no PYTHONPATH, no working directory, no .pth files (an editable install of this
    # repository is one); only the installed packages' directories.
    code = f"""
import importlib.util, sys
sys.path += {site.getsitepackages()!r}
assert importlib.util.find_spec("mnist") is None, "mnist is importable"
import mlflow.pytorch, torch
mlflow.set_tracking_uri({uri!r})
model = mlflow.pytorch.load_model("models:/{output.model_id}")
print([tuple(model(torch.zeros(n, 1, 28, 28)).shape) for n in (1, 32)])
"""
    loaded = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip() == "[(1, 10), (32, 10)]"
