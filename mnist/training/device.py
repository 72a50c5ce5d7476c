"""Device, precision and determinism: the hardware-facing choices of a run."""

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mnist.models.checks import INPUT_SHAPE
from mnist.values import is_int

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def available(name: str) -> bool:
    if name == "cuda":
        return torch.cuda.is_available()
    if name == "mps":
        return torch.backends.mps.is_available()
    return name == "cpu"


def resolve_device(name: str) -> torch.device:
    """ "auto" picks cuda, then mps, then cpu."""
    if name == "auto":
        name = next(n for n in ("cuda", "mps", "cpu") if available(n))
    return torch.device(name)


def _cuda_bf16_native() -> bool:
    """torch.cuda.is_bf16_supported() alone also counts GPUs that only emulate bf16 (T4,
    V100), where it runs slower than fp32."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument: compute capability 8.0 is Ampere
        return torch.cuda.get_device_capability() >= (8, 0)


def precision_problem(precision: str, device: torch.device) -> str | None:
    """Why `precision` cannot run on `device`, or None if it can."""
    if precision not in PRECISIONS:
        return f"trainer.precision={precision!r} is not one of {', '.join(PRECISIONS)}"
    if precision == "fp32":
        return None
    if device.type == "cpu" and precision == "fp16":
        return "trainer.precision=fp16 needs a GPU; use bf16 or fp32 on cpu"
    if device.type == "cuda" and precision == "bf16" and not _cuda_bf16_native():
        return (
            "trainer.precision=bf16 is not native on this GPU (compute capability < 8.0: "
            "it would be emulated, slower than fp32); use fp16 or fp32"
        )
    if device.type == "mps":
        if not torch.amp.autocast_mode.is_autocast_available("mps"):
            return f"trainer.precision={precision} needs a PyTorch with autocast on mps; use fp32"
        if precision == "bf16" and not torch.backends.mps.is_macos_or_newer(14, 0):
            return "trainer.precision=bf16 on mps needs macOS 14 or newer; use fp16 or fp32"
    return None


# The ops torch.use_deterministic_algorithms(True) raises on, per device: those its
# documentation lists without a deterministic kernel there (tests/test_accelerators.py
# checks them against a real training step). AdaptiveAvgPool2d(1) runs none on CUDA:
# torch computes it as a mean.
NONDETERMINISTIC_OPS: dict[str, tuple[str, ...]] = {
    "cuda": (
        "aten.avg_pool3d_backward", "aten._adaptive_avg_pool2d_backward",
        "aten._adaptive_avg_pool3d_backward", "aten.adaptive_max_pool2d_backward",
        "aten.fractional_max_pool2d_backward", "aten.fractional_max_pool3d_backward",
        "aten.max_unpool2d", "aten.max_unpool3d", "aten.upsample_linear1d_backward",
        "aten.upsample_bilinear2d_backward", "aten.upsample_bicubic2d_backward",
        "aten.upsample_trilinear3d_backward", "aten.reflection_pad1d_backward",
        "aten.reflection_pad2d_backward", "aten.reflection_pad3d_backward",
        "aten.nll_loss2d_forward", "aten._ctc_loss_backward", "aten.put_", "aten.histc",
        "aten.median.dim", "aten.grid_sampler_2d_backward", "aten.grid_sampler_3d_backward",
        "aten.scatter_reduce",
    ),
    "mps": (
        "aten.max_pool2d_with_indices_backward", "aten.max_pool3d_with_indices_backward",
        "aten.avg_pool3d_backward", "aten.embedding_dense_backward",
        "aten.embedding_backward", "aten.grid_sampler_2d_backward", "aten.kthvalue",
    ),
}  # fmt: skip


class OpRecorder(TorchDispatchMode):
    """The names of the aten ops run inside it, e.g. "aten.mean.dim"."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


def training_step_ops(model: nn.Module, device: str = "meta") -> set[str]:
    """The ops of a training step (forward, cross-entropy, backward) of `model`, on `device`,
    where its weights are: on meta, any model's layers and functions without computing."""
    with torch.device(device):
        images, labels = torch.zeros(INPUT_SHAPE), torch.zeros(INPUT_SHAPE[0], dtype=torch.long)
        with OpRecorder() as recorder:
            F.cross_entropy(model.train()(images), labels).backward()
    return recorder.ops


def determinism_problem(model: nn.Module, device: torch.device) -> str | None:
    """Why trainer.deterministic=true would fail on `device` with `model` (built on the meta
    device), or None."""
    refused = NONDETERMINISTIC_OPS.get(device.type)
    if refused is None:
        return None
    try:
        ran = training_step_ops(model)
    except Exception:  # a backward the meta device lacks: torch itself says so in the run
        return None
    ops = sorted({op.split(".")[1] for op in ran if op.startswith(refused)})
    if not ops:
        return None
    return (
        f"trainer.deterministic=true: {', '.join(ops)} (in a training step of this model) has "
        f"no deterministic kernel on {device.type}; set trainer.deterministic=false, or use a "
        "model without it or another device"
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_freed_memory() -> bool:
    """Have glibc malloc serve allocations up to 32 MiB from the heap and keep freed memory,
    instead of fresh mmap pages (and their page faults) for each large tensor of every step:
    +25-30% CPU throughput with one thread (docs/performance.md#what-each-switch-did).
    False where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    # M_MMAP_THRESHOLD is -3, M_TRIM_THRESHOLD -1 (malloc.h).
    return bool(mallopt(-3, 32 << 20) and mallopt(-1, 1 << 30))


# What torch chose for this process (or a launcher set before torch was imported).
DEFAULT_NUM_THREADS = torch.get_num_threads()
# torch does not refuse more threads than CPUs: they only slow the run down, or crash it.
MAX_NUM_THREADS = os.cpu_count() or 1


@dataclass(frozen=True)
class DeviceSettings:
    """The `device` config group (conf/device/*.yaml)."""

    name: str = "auto"
    num_threads: int | None = None  # None: DEFAULT_NUM_THREADS
    malloc_tuning: bool | str = "auto"  # keep_freed_memory; auto: with one thread


def device_problems(settings: Mapping[str, Any], precision: str) -> Iterator[str]:
    """One line per invalid value of a `device` section, and for a precision it lacks."""
    if not (isinstance(settings["malloc_tuning"], bool) or settings["malloc_tuning"] == "auto"):
        yield f"device.malloc_tuning={settings['malloc_tuning']!r} must be auto, true or false"
    threads = settings["num_threads"]
    if threads is not None and not (is_int(threads) and 1 <= threads <= MAX_NUM_THREADS):
        yield (
            f"device.num_threads={threads!r} must be an integer between 1 and "
            f"{MAX_NUM_THREADS} (this machine's CPUs), or null for PyTorch's default"
        )
    name = settings["name"]
    if name != "auto" and not available(name):
        yield (
            f"device={name} is not available on this machine "
            "(use device=auto to fall back to what is)"
            if name in ("cpu", "cuda", "mps")
            else f"device.name={name!r} is not one of auto, cpu, cuda, mps"
        )
    elif problem := precision_problem(precision, resolve_device(name)):
        yield problem


def configure_torch(device: torch.device, settings: DeviceSettings, deterministic: bool) -> None:
    """Set every global torch setting a run depends on, whatever a previous job of the
    process (a basic-launcher sweep) left. Two cannot be taken back: glibc's malloc tuning
    (speed only) and CUBLAS_WORKSPACE_CONFIG, read at the first cuBLAS call, so a CUDA sweep
    that mixes deterministic jobs should export CUBLAS_WORKSPACE_CONFIG=:4096:8 itself."""
    torch.set_num_threads(settings.num_threads or DEFAULT_NUM_THREADS)
    tuning = settings.malloc_tuning
    if tuning is True or (tuning == "auto" and torch.get_num_threads() == 1):
        keep_freed_memory()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    ) != (deterministic, False):
        # Only on a change: setting it imports torch's compiler (seconds at start-up).
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    # Autotuning may pick different kernels from run to run.
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def torch_settings() -> dict[str, str]:
    """The global settings a job runs with, as MLflow tags (timings compare only with the
    same thread count)."""
    return {
        "torch.num_threads": str(torch.get_num_threads()),
        "torch.deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "cudnn.deterministic": str(torch.backends.cudnn.deterministic).lower(),
        "cudnn.benchmark": str(torch.backends.cudnn.benchmark).lower(),
    }


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on an asynchronous GPU, before a clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
