"""Device, precision and determinism: the hardware-facing choices of a run, in one place."""

import contextlib
import ctypes
import os
import sys

import torch
from omegaconf import DictConfig

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


def precision_problem(precision: str, device: torch.device) -> str | None:
    """Why `precision` cannot run on `device`, or None if it can."""
    if precision not in PRECISIONS:
        return f"trainer.precision={precision!r} is not one of {', '.join(PRECISIONS)}"
    if precision == "fp16" and device.type == "cpu":
        return "trainer.precision=fp16 needs a GPU; use bf16 or fp32 on cpu"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "trainer.precision=bf16 is not supported by this GPU; use fp16 or fp32"
    return None


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
    (README, Performance). Returns False where malloc is not glibc's (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20) and mallopt(M_TRIM_THRESHOLD, 1 << 30))


def configure_torch(device: torch.device, settings: DictConfig, deterministic: bool) -> None:
    """`settings`: the `device` config group (conf/device/*.yaml)."""
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    tuning = settings.malloc_tuning
    if tuning is True or (tuning == "auto" and torch.get_num_threads() == 1):
        keep_freed_memory()
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        # Autotuned kernels: fixed input shapes make the one-time search pay off.
        torch.backends.cudnn.benchmark = True
