"""Checkpoints: written atomically so a crash mid-write keeps the previous one, read with
`weights_only=True` so loading one never unpickles arbitrary objects."""

import errno
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mnist.atomic import remove_temporaries, written_atomically
from mnist.errors import CheckpointWriteError, ConfigError

log = logging.getLogger(__name__)

# "Unsupported global: GLOBAL x.y was not an allowed global", or "Trying to load
# unsupported GLOBAL x.y whose module x is blocked".
_REFUSED_GLOBAL = re.compile(r"unsupported (?:global: )?GLOBAL (\S+)", re.IGNORECASE)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """CheckpointWriteError, naming the path and what was kept, when it cannot be written."""
    path = Path(path)
    try:
        # Through a Python file, a failed write raises the OSError with its errno.
        with written_atomically(path) as staged, open(staged, "wb") as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as error:
        # The OSError behind it: torch's zip writer raises its own RuntimeError over it.
        e: BaseException | None = error
        while e is not None and not isinstance(e, OSError):
            e = e.__cause__ or e.__context__
        if not isinstance(e, OSError):
            raise
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointWriteError(
                f"no space left on {path.parent} while writing {path.name} ({kept})"
            ) from e
        raise CheckpointWriteError(f"cannot write {path} ({e.strerror or e}); {kept}") from e
    return path


def _reason(error: BaseException) -> str:
    """The line of torch's message that says what is wrong, without its advice to load with
    weights_only=False (to run whatever the file contains)."""
    text = str(error)
    if unpickler := re.search(r"WeightsUnpickler error:\s*(.+)", text):
        return unpickler[1].strip()[:300]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if "weights_only" not in line]
    return useful[0][:300] if useful else type(error).__name__


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", source: str | None = None
) -> dict[str, Any]:
    """ConfigError naming `source` (default: the path) when it holds code, or is no
    readable checkpoint."""
    source = source or str(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        # Arbitrary bytes fail in arbitrary ways inside the unpickler.
        if refused := _REFUSED_GLOBAL.search(str(e)):
            raise ConfigError(
                f"{source}: refused, loading it would unpickle {refused[1]}; a checkpoint may "
                "only hold weights and plain data"
            ) from e
        raise ConfigError(
            f"{source}: not a readable checkpoint, the file is corrupt or truncated ({_reason(e)})"
        ) from e


@contextmanager
def claimed(directory: Path) -> Iterator[Path]:
    """`directory`, locked (flock: it dies with the process) against a second job on the same
    run, with the temporary files of writers killed mid-write removed."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"another process is training in {directory} right now (it holds the lock on "
            "that checkpoint directory); wait for it to end"
        ) from None
    try:
        for leftover in remove_temporaries(directory):
            log.info("Removed %s, left by a write that was killed", leftover)
        yield directory
    finally:
        os.close(fd)


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the weights alone, independent of torch.save's file layout."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
