"""A dispatch mode that watches every aten op a piece of code runs, standing in on the CPU
for what only MPS would reveal."""

import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Host-side steps that compute in float64 on purpose, on tensors they first moved to the
# CPU (`.cpu()`): they run there whatever the training device is.
HOST_FLOAT64 = {
    ("mnist.data.tensors", "split_indices"),
    ("mnist.reporting.reports", "classification_report"),
}


def _host_side() -> bool:
    frame = sys._getframe()
    while frame is not None:
        if (frame.f_globals.get("__name__"), frame.f_code.co_name) in HOST_FLOAT64:
            return True
        frame = frame.f_back
    return False


class NoFloat64(TorchDispatchMode):
    """Fails on any op that takes or makes a float64 tensor, as MPS does (it has no
    float64), except in the host-side steps of HOST_FLOAT64."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        if any(t.dtype == torch.float64 for t in tensors) and not _host_side():
            raise AssertionError(f"{func} uses float64, which MPS does not have")
        return out
