"""Checkpoints: one dict per file, written atomically (temporary file, fsync, rename) so a
crash mid-write leaves the previous checkpoint intact, and read with `weights_only=True`
so loading a checkpoint never unpickles arbitrary objects."""

import hashlib
from pathlib import Path
from typing import Any

import torch

from mnist.atomic import written_atomically


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with written_atomically(path) as staged:
        torch.save(state, staged)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the weights alone (names, dtypes, shapes, values), independent of how
    torch.save lays out the file: equal for bit-identical models, the reproducibility tag."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
