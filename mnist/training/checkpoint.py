"""Checkpoints: one dict per file, written atomically (temporary file, fsync, rename) so a
crash mid-write leaves the previous checkpoint intact, and read with `weights_only=True`
so loading a checkpoint never unpickles arbitrary objects. A run's checkpoint directory
belongs to one process at a time: the job that trains the run holds its lock."""

import errno
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mnist.atomic import remove_temporaries, written_atomically
from mnist.errors import CheckpointWriteError, ConfigError

log = logging.getLogger(__name__)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Raises CheckpointWriteError, naming the path, when the file cannot be written."""
    path = Path(path)
    try:
        # Through a Python file, a failed write raises the OSError with its errno; torch's
        # own file writer reports a full disk as "[enforce fail at inline_container.cc]".
        with written_atomically(path) as staged, open(staged, "wb") as f:
            torch.save(state, f)
    except OSError as e:
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointWriteError(
                f"no space left on {path.parent} while writing {path.name} ({kept}); free "
                "some space, then resume the run"
            ) from e
        raise CheckpointWriteError(f"cannot write {path} ({e.strerror or e}); {kept}") from e
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


@contextmanager
def claimed(directory: Path) -> Iterator[Path]:
    """`directory`, locked (flock) for this process until the block ends, with the
    temporary files of writers killed mid-write removed. A second job on the same run,
    such as two resumes at once, is refused instead of interleaving its checkpoints and
    logs with the first one's. The lock is the kernel's: it goes with the process, so
    one that was killed never leaves a stale lock behind."""
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
    """A digest of the weights alone (names, dtypes, shapes, values), independent of how
    torch.save lays out the file: equal for bit-identical models, the reproducibility tag."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
