"""Files that are either whole or absent: written under a temporary name in the target's
directory, flushed to disk, then renamed over the target. A crash or an error mid-write
leaves whatever was at the target before (a checkpoint a run resumes from, an exported
model someone ships) and no temporary file; a process killed mid-write leaves its temporary
file, which `remove_temporaries` clears once no writer can be using it."""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """Yields the temporary path to write; on a clean exit it replaces `path`. The same
    directory keeps the rename atomic (no copy across file systems)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    os.close(fd)
    staged = Path(name)
    try:
        yield staged
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files that killed writers left in `directory` (.<name>.*.tmp)
    and return them. Only for a caller that knows no other process writes there now."""
    leftovers = sorted(directory.glob(f".*{TEMPORARY_SUFFIX}"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers
