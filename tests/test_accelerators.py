"""What CUDA and Apple's MPS would reveal, proved on the CPU where it can be: no float64
anywhere (MPS has none), every torch global set from each job's own config, clocks read
after the device's queued work, precision checked per device, deterministic training only
where every op of a training step has a deterministic kernel, and a checkpoint from another device
resumed with a warning. tests/test_cuda.py and tests/test_mps.py run on the devices."""

import logging
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

import mnist.training.loop as loop_module
from mnist import Classifier
from mnist.config import run_settings, validate_config
from mnist.context import JobContext
from mnist.errors import ConfigError
from mnist.inference.evaluate_checkpoints import run_evaluation
from mnist.job import run_training
from mnist.metric_names import VAL_ACC
from mnist.models import build_model, built_on_meta
from mnist.training.build import set_up
from mnist.training.checkpoint import load_checkpoint, save_checkpoint
from mnist.training.device import (
    DEFAULT_NUM_THREADS,
    NONDETERMINISTIC_OPS,
    DeviceSettings,
    configure_torch,
    determinism_problem,
    precision_problem,
    synchronize,
    torch_settings,
    training_step_ops,
)
from mnist.training.resume import Progress
from tests.helpers import CONF_DIR, compose_config
from tests.helpers.dispatch import NoFloat64
from tests.helpers.images import seven, to_uint8
from tests.helpers.training import CPU, run_fit

CUDA, MPS = torch.device("cuda", 0), torch.device("mps")
MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def test_nothing_runs_in_float64_in_training_evaluation_tta_or_prediction(
    tiny_cfg, tmp_path, synthetic_root
):
    with pytest.raises(AssertionError, match="float64"), NoFloat64():
        torch.ones(2).double()  # the stand-in sees what MPS would refuse
    cfg = tiny_cfg("trainer.epochs=1", "model=gap20k", "augmentation=crop_rotate",
                   "trainer.label_smoothing=0.1", "trainer.grad_clip=1.0",
                   "trainer.test_every_epoch=true")  # fmt: skip
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    evaluation = compose_config([
        f"ckpt={best}", f"data.root={synthetic_root}", "data.verify_checksums=false",
        f"paths.mlruns={tmp_path / 'mlruns'}", "device=cpu", "tta=true",
    ], config_name="evaluate")  # fmt: skip
    drawn = Image.fromarray(to_uint8(1 - seven()))
    with NoFloat64():
        trained = run_training(cfg, JobContext(output_dir=tmp_path / "run"))
        tta = run_evaluation(evaluation, JobContext(output_dir=tmp_path / "evaluate"))
        prediction = Classifier.load(best).predict(drawn)
    assert 0 <= trained["test/acc"] <= 1 and 0 <= tta["test/acc"] <= 1
    assert prediction.digit in range(10) and 0 < prediction.probability <= 1


@pytest.fixture
def torch_globals(monkeypatch):
    """The process's torch settings, put back after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = torch_settings()
    yield
    torch.set_num_threads(int(saved["torch.num_threads"]))
    torch.use_deterministic_algorithms(saved["torch.deterministic"] == "true")
    torch.backends.cudnn.deterministic = saved["cudnn.deterministic"] == "true"
    torch.backends.cudnn.benchmark = saved["cudnn.benchmark"] == "true"


def device_settings(num_threads):
    return DeviceSettings("cpu", num_threads, malloc_tuning=False)


def test_each_job_sets_every_torch_global_from_its_own_config(torch_globals):
    """A basic-launcher sweep runs its jobs in one process: nothing a job sets may leak."""
    configure_torch(CPU, device_settings(DEFAULT_NUM_THREADS + 1), deterministic=True)
    assert torch_settings() == {
        "torch.num_threads": str(DEFAULT_NUM_THREADS + 1),
        "torch.deterministic": "true",
        "cudnn.deterministic": "true",
        "cudnn.benchmark": "false",
    }
    configure_torch(CPU, device_settings(None), deterministic=False)
    assert torch_settings() == {
        "torch.num_threads": str(DEFAULT_NUM_THREADS),
        "torch.deterministic": "false",
        "cudnn.deterministic": "false",
        "cudnn.benchmark": "false",
    }
    # cudnn.benchmark autotunes CUDA kernels, except where the job must be deterministic.
    configure_torch(CUDA, device_settings(None), deterministic=False)
    assert torch.backends.cudnn.benchmark
    configure_torch(CUDA, device_settings(None), deterministic=True)
    assert not torch.backends.cudnn.benchmark


def test_a_non_deterministic_job_does_not_import_torchs_compiler():
    """Setting determinism imports torch._inductor (seconds at start-up): only on a change."""
    code = """
import sys, torch
from mnist.training.device import DeviceSettings, configure_torch
settings = DeviceSettings("cpu", num_threads=1, malloc_tuning=False)
configure_torch(torch.device("cpu"), settings, deterministic=False)
assert not torch.are_deterministic_algorithms_enabled()
print("torch._inductor" in sys.modules)
"""
    checked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert checked.stdout.strip() == "False"


def test_synchronize_waits_for_the_gpu_and_does_nothing_on_cpu(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    synchronize(CPU)
    assert waited == []
    synchronize(CUDA)
    synchronize(MPS)
    assert waited == [CUDA, "mps"]


def test_the_training_clock_waits_for_the_devices_queued_steps(tiny_cfg, tmp_path, monkeypatch):
    clock_reads = []
    real_clock = loop_module.time.perf_counter
    monkeypatch.setattr(
        loop_module.time, "perf_counter", lambda: clock_reads.append("clock") or real_clock()
    )
    monkeypatch.setattr(loop_module, "synchronize", lambda device: clock_reads.append(device))
    run_fit(tiny_cfg("trainer.epochs=2"), tmp_path)
    # Each epoch: the clock starts, the steps are queued, then a wait before the clock
    # stops the epoch's training time; validation starts after it.
    waits = [i for i, read in enumerate(clock_reads) if read == CPU]
    assert len(waits) == 2
    assert all(clock_reads[i + 1] == "clock" for i in waits)


def emulated_bf16(including_emulation=True):
    """torch.cuda.is_bf16_supported on a V100 or T4: bf16 only by emulation."""
    return including_emulation


@pytest.mark.parametrize(
    ("is_bf16_supported", "capability", "refused"),
    [
        (emulated_bf16, (7, 0), True),
        (lambda including_emulation=True: True, (9, 0), False),  # A100, H100
        (lambda: True, (7, 5), True),  # a torch without including_emulation, on a T4
        (lambda: True, (8, 0), False),
    ],
)
def test_bf16_is_accepted_only_on_gpus_with_bf16_units(
    monkeypatch, is_bf16_supported, capability, refused
):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    problem = precision_problem("bf16", CUDA)
    assert (problem is not None) is refused
    assert refused is False or "not native on this GPU" in problem
    assert precision_problem("fp16", CUDA) is None


@pytest.mark.parametrize(
    ("precision", "autocast", "macos_14", "problem"),
    [
        ("fp16", True, False, None),
        ("bf16", True, True, None),
        ("bf16", True, False, "bf16 on mps needs macOS 14"),
        ("fp16", False, True, "needs a PyTorch with autocast on mps"),
        ("fp32", False, False, None),
    ],
)
def test_mps_precision_needs_autocast_and_macos_14_for_bf16(
    monkeypatch, precision, autocast, macos_14, problem
):
    monkeypatch.setattr(
        torch.amp.autocast_mode, "is_autocast_available", lambda device_type: autocast
    )
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos_14)
    found = precision_problem(precision, MPS)
    assert found is None if problem is None else problem in found


@pytest.mark.parametrize("size, refused", [(2, True), (1, False)])
def test_a_layer_without_a_deterministic_cuda_kernel_is_refused_there_only(size, refused):
    """AdaptiveAvgPool2d(2)'s backward has no deterministic CUDA kernel; at size 1 torch
    computes a mean, which has. A model is refused by the ops it runs, not its classes."""
    with torch.device("meta"):
        model = nn.Sequential(
            nn.Conv2d(1, 10, 3), nn.AdaptiveAvgPool2d(size), nn.Flatten(),
            nn.Linear(10 * size**2, 10),
        )  # fmt: skip
    problem = determinism_problem(model, CUDA)
    assert (problem is not None) is refused
    assert problem is None or problem.startswith(
        "trainer.deterministic=true: _adaptive_avg_pool2d_backward (in a training step of "
        "this model) has no deterministic kernel on cuda"
    )
    assert determinism_problem(model, CPU) is None and determinism_problem(model, MPS) is None


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_deterministic_training_is_refused_exactly_where_a_step_would_raise(name):
    """The meta device's training step runs the ops a real one runs, so a config is refused
    before anything is written exactly where one of them has no deterministic kernel (on
    MPS, max pooling's backward), not in the first step of a logged run."""
    model_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
    ops, model = training_step_ops(build_model(model_cfg), "cpu"), built_on_meta(model_cfg)
    assert training_step_ops(model) == ops
    for device in (CUDA, MPS):
        refused = {op for op in ops if op.startswith(NONDETERMINISTIC_OPS[device.type])}
        assert (determinism_problem(model, device) is None) is not refused


def test_validation_refuses_deterministic_mps_training_of_a_pooling_model(monkeypatch):
    for module in ("mnist.config", "mnist.training.device"):
        monkeypatch.setattr(f"{module}.available", lambda name: True)  # as on a Mac
    with pytest.raises(
        ConfigError, match=r"max_pool2d_with_indices_backward .* no deterministic kernel on mps"
    ):
        validate_config(compose_config(["device=mps", "trainer.deterministic=true"]))
    validate_config(compose_config(["device=mps", "trainer.deterministic=false"]))
    validate_config(compose_config(["device=mps", "trainer.deterministic=true",
                                    "model=cnn3_stride"]))  # fmt: skip
    # gap20k's global average pooling is a mean: deterministic on CUDA.
    validate_config(compose_config(["device=cuda", "trainer.deterministic=true", "model=gap20k"]))


def test_a_gpu_checkpoint_resumes_on_the_cpu_with_warnings(tiny_cfg, tmp_path, monkeypatch, caplog):
    """A last.pt written on a GPU, resumed on a machine without one: the command line's
    device replaces the run's, the GPU's random states are left alone, and a warning names
    both devices: the run goes on, not bit-exactly."""
    cfg = tiny_cfg("trainer.epochs=1", "augmentation=shift_rotate", "scheduler=none")
    first = run_training(cfg, JobContext(output_dir=tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    # As a 2-epoch run on cuda:0 leaves it after its first epoch: the config names the GPU,
    # and the random states of its generators are Philox states (16 bytes).
    state["config"]["trainer"]["epochs"] = 2
    state["config"]["device"]["name"] = "cuda"
    state["device"] = "cuda:0"
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    state["rng"]["augment"] = torch.zeros(16, dtype=torch.uint8)
    save_checkpoint(state, last)
    # ...and as an interrupted run is left in MLflow: a FINISHED one is not resumed.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    client.set_terminated(first["run_id"], "KILLED")

    def no_gpu_here(*args, **kwargs):
        raise AssertionError("restored a GPU's random state on a machine without one")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", no_gpu_here)
    monkeypatch.setattr(torch.cuda, "set_rng_state", no_gpu_here)
    with caplog.at_level(logging.WARNING):
        resumed = run_training(tiny_cfg(f"trainer.resume={last}"), JobContext(tmp_path / "new"))
    assert "device=cuda, which this machine lacks: resuming with device=cpu" in caplog.text
    assert "Resuming on cpu a run that was training on cuda:0" in caplog.text
    assert resumed["run_id"] == first["run_id"]
    assert [m.step for m in client.get_metric_history(first["run_id"], VAL_ACC)] == [1, 2]


def test_mps_random_state_is_saved_and_restored_only_where_mps_exists(tiny_cfg, monkeypatch):
    mps_state = torch.arange(8, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": mps_state)
    monkeypatch.setattr(
        torch.mps, "set_rng_state", lambda state, device="mps": restored.append(state)
    )
    learner = set_up(run_settings(tiny_cfg()), CPU).learner
    state = learner.state(Progress(), learner.shuffle.get_state())
    assert torch.equal(state["rng"]["mps"], mps_state)
    learner.restore(state)
    assert restored == [mps_state]
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    learner.restore(state)
    assert len(restored) == 1
