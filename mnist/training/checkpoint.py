"""Checkpoints: one dict per file, written atomically (temporary file, fsync, rename) so a
crash mid-write leaves the previous checkpoint intact, and read with `weights_only=True`
so loading a checkpoint never unpickles arbitrary objects."""

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from mnist.atomic import written_atomically
from mnist.errors import CheckpointError

# torch's weights-only unpickler names the global it refused: "Unsupported global: GLOBAL
# x.y was not an allowed global" (not allowlisted), or "Trying to load unsupported GLOBAL
# x.y whose module x is blocked" (os, sys, ...).
_REFUSED_GLOBAL = re.compile(r"unsupported (?:global: )?GLOBAL (\S+)", re.IGNORECASE)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with written_atomically(path) as staged:
        torch.save(state, staged)
    return path


def _reason(error: BaseException) -> str:
    """The line of torch's message that says what is wrong with the file. Its advice to
    load with weights_only=False (i.e. to run whatever the file contains) is left out."""
    text = str(error)
    if unpickler := re.search(r"WeightsUnpickler error:\s*(.+)", text):
        return unpickler[1].strip()[:300]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if "weights_only" not in line]
    return useful[0][:300] if useful else type(error).__name__


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", source: str | None = None
) -> dict[str, Any]:
    """The checkpoint's contents; CheckpointError naming `source` (default: the path)
    when it holds code rather than data, or is not a readable checkpoint at all."""
    source = source or str(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        # Arbitrary bytes fail in arbitrary ways inside the unpickler (UnpicklingError,
        # IndexError, UnicodeDecodeError, ...): all of them mean the file is no checkpoint.
        if refused := _REFUSED_GLOBAL.search(str(e)):
            raise CheckpointError(
                f"{source}: refused, loading it would unpickle {refused[1]}; a checkpoint may "
                "only hold weights and plain data"
            ) from e
        raise CheckpointError(
            f"{source}: not a readable checkpoint, the file is corrupt or truncated ({_reason(e)})"
        ) from e


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the weights alone (names, dtypes, shapes, values), independent of how
    torch.save lays out the file: equal for bit-identical models, the reproducibility tag."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
