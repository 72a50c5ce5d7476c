"""Device, precision and determinism: the hardware-facing choices of a run, in one place."""

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mnist.values import is_int

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def available(name: str) -> bool:
    if name == "cpu":
        return True
    if name == "cuda":
        return torch.cuda.is_available()
    if name == "mps":
        return torch.backends.mps.is_available()
    return False


def resolve_device(name: str) -> torch.device:
    """ "auto" picks cuda, then mps, then cpu."""
    if name == "auto":
        name = next(n for n in ("cuda", "mps", "cpu") if available(n))
    return torch.device(name)


def _cuda_bf16_native() -> bool:
    """Whether the GPU has bf16 units. torch.cuda.is_bf16_supported() also counts GPUs
    that only emulate bf16 (T4, V100), where it runs slower than fp32."""
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


# Layers whose backward pass has no deterministic kernel on a device, so that
# torch.use_deterministic_algorithms(True) raises in the first training step (from
# torch.use_deterministic_algorithms' documentation, for the layers mnist.models can use;
# tests/test_accelerators.py checks every model's ops against the documented lists).
# AdaptiveAvgPool2d(1) is not among them on CUDA: torch computes it as a mean.
NONDETERMINISTIC_BACKWARD: dict[str, tuple[type[nn.Module], ...]] = {
    "mps": (nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool3d, nn.Embedding, nn.EmbeddingBag),
}


def determinism_problem(model: nn.Module, device: torch.device) -> str | None:
    """Why trainer.deterministic=true would fail on `device` with `model`, or None."""
    refused = NONDETERMINISTIC_BACKWARD.get(device.type, ())
    layers = sorted({type(m).__name__ for m in model.modules() if isinstance(m, refused)})
    if not layers:
        return None
    return (
        f"trainer.deterministic=true: {', '.join(layers)} has no deterministic backward on "
        f"{device.type}; set trainer.deterministic=false, or use a model without it or "
        "another device"
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Tell glibc malloc to serve allocations up to 32 MiB from the heap and keep freed
    memory. By default each large tensor of a training step (activations, gradients: a few
    MiB each) gets fresh mmap pages and returns them when freed, so every step pays page
    faults (glibc only raises that threshold gradually). Measured on the 2-core CPU:
    +25-30% training throughput with one thread (as in parallel sweeps), none with two
    (docs/performance.md#what-each-switch-did). Returns False where malloc is not glibc's
    (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20) and mallopt(M_TRIM_THRESHOLD, 1 << 30))


# The thread count torch chose for this process (one per core, or what a launcher set in
# the environment before torch was imported): device.num_threads=null means this.
DEFAULT_NUM_THREADS = torch.get_num_threads()
# The most device.num_threads may be: one thread per logical CPU of the machine. More only
# slow the run down, and torch does not refuse them: it starts them at the first operation,
# and where the system cannot (100000) the process crashes, or is left without memory.
MAX_NUM_THREADS = os.cpu_count() or 1


@dataclass(frozen=True)
class DeviceSettings:
    """The `device` config group (conf/device/*.yaml)."""

    name: str = "auto"  # cpu, cuda, mps, or auto: the first of cuda, mps, cpu available
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
    """Set every global torch setting a run depends on from its own config, whatever the
    previous job of the process (a basic-launcher sweep runs its jobs one after another in
    one process) left behind.

    Two settings cannot be taken back within a process: glibc's malloc tuning (mallopt
    switches off glibc's own threshold adjustment for good; it changes speed, not results)
    and CUBLAS_WORKSPACE_CONFIG, which PyTorch reads at its first cuBLAS call. A CUDA sweep
    that runs deterministic jobs after others should export CUBLAS_WORKSPACE_CONFIG=:4096:8
    before it starts."""
    torch.set_num_threads(settings.num_threads or DEFAULT_NUM_THREADS)
    tuning = settings.malloc_tuning
    if tuning is True or (tuning == "auto" and torch.get_num_threads() == 1):
        keep_freed_memory()
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    ) != (deterministic, False):
        # Only on a change: setting it imports torch's compiler (seconds at start-up).
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    # Autotuned kernels: fixed input shapes make the one-time search pay off, but the
    # search may pick different kernels from run to run.
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def torch_settings() -> dict[str, str]:
    """The global settings a job actually runs with, as MLflow tags. Parallel jobs share
    the cores: their timings only compare with the thread count."""
    return {
        "torch.num_threads": str(torch.get_num_threads()),
        "torch.deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "cudnn.deterministic": str(torch.backends.cudnn.deterministic).lower(),
        "cudnn.benchmark": str(torch.backends.cudnn.benchmark).lower(),
    }


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`: GPUs run asynchronously, so a clock read
    without this stops while the work it should time is still queued. Nothing on cpu."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
