import platform
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from mnist.config import validate_config
from mnist.errors import ConfigError
from mnist.training.device import keep_freed_memory
from tests.helpers import CONF_DIR, TRAIN_SCRIPT, compose_config, run_train_script

GROUPS = [
    "model",
    "optimizer",
    "scheduler",
    "augmentation",
    "device",
    "trainer",
    "dataset",
    "logger",
]
OPTIONS = [
    (group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))
]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_of_every_group_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert cfg["data" if group == "dataset" else group] is not None
    if group != "device" or option in ("auto", "cpu"):
        validate_config(cfg)


EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_and_each_job_of_its_sweep_validates(experiment):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [f"experiment={experiment}"], return_hydra_config=True)
        validate_config(cfg)
        for key, values in (cfg.hydra.sweeper.params or {}).items():
            for value in str(values).split(","):
                validate_config(compose("train", [f"experiment={experiment}", f"{key}={value}"]))


def test_defaults_train_the_fast_model_on_a_validation_split():
    cfg = compose_config([])
    assert cfg.model._target_ == "mnist.models.ConvNet"
    assert cfg.data.val_size == 5000
    assert cfg.paths.mlruns.endswith("/mlruns")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=0", "trainer.epochs=0 must be an integer >= 1"),
        ("trainer.batch_size=-4", "trainer.batch_size=-4"),
        ("trainer.batch_size=abc", "trainer.batch_size='abc'"),
        ("data.val_size=60000", "data.val_size=60000"),
        ("data.train_subset=0", "data.train_subset=0"),
        ("trainer.precision=fp8", "trainer.precision='fp8' is not one of"),
        ("trainer.label_smoothing=1.5", "trainer.label_smoothing=1.5"),
        ("trainer.grad_clip=0", "trainer.grad_clip=0"),
        ("trainer.early_stopping.patience=0", "patience=0"),
        ("optimizer.lr=-1", "optimizer.lr=-1"),
        ("augmentation.crop_size=40", "crop_size"),
        ("scheduler.name=warmup", "scheduler.name='warmup'"),
        ("seed=-1", "seed=-1"),
        ("model.dropout=2", "cannot build mnist.models.ConvNet from model.* (dropout"),
        ("+model.width=8", "unexpected keyword argument 'width'"),
        ("logger.tensorboard=maybe", "logger.tensorboard='maybe' must be true or false"),
        ("device.malloc_tuning=1", "device.malloc_tuning=1 must be auto, true or false"),
    ],
)
def test_invalid_values_are_named_in_one_line(override, message):
    with pytest.raises(ConfigError, match=r"^Invalid config: ") as e:
        validate_config(compose_config([override]))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="device=cuda is not available"):
        validate_config(compose_config(["device=cuda"]))


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        validate_config(compose_config(["device=cpu", "trainer.precision=fp16"]))


def test_script_exits_non_zero_before_any_side_effect(tmp_path):
    data_root = tmp_path / "data"
    result = run_train_script(
        "trainer.epochs=0",
        "data.val_size=70000",
        "model.dropout=2",
        f"data.root={data_root}",
        f"paths.mlruns={tmp_path / 'mlruns'}",
        f"paths.outputs={tmp_path / 'outputs'}",
    )
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert error_lines == [error_lines[0]] and error_lines[0].startswith("error: Invalid config")
    for problem in ("trainer.epochs=0", "data.val_size=70000", "dropout probability"):
        assert problem in error_lines[0]
    assert not data_root.exists()  # nothing downloaded
    assert not (tmp_path / "mlruns").exists()  # no MLflow run


def test_unknown_keys_get_hydras_error(tmp_path):
    result = run_train_script("trainer.epochz=3", f"paths.outputs={tmp_path}")
    assert result.returncode != 0
    assert "trainer.epochz" in result.stderr
    result = run_train_script("model=resnet152", f"paths.outputs={tmp_path}")
    assert result.returncode != 0
    assert "resnet152" in result.stderr


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_tuning_is_accepted_by_glibc():
    assert keep_freed_memory() is True


def test_help_answers_without_importing_torch_or_mlflow():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(TRAIN_SCRIPT), "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and "Powered by Hydra" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "hydra" in imported
    assert not imported & {"torch", "mlflow", "mnist.training.job"}
