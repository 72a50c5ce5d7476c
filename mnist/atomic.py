"""Files that are either whole or absent: written under a temporary name beside the target,
flushed, then renamed over it. A process killed mid-write leaves its temporary file, which
`remove_temporaries` clears."""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """Yields the temporary path to write; on a clean exit it replaces `path`."""
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
    """Delete (and return) the temporary files killed writers left in `directory`; only for
    a caller that knows no other process writes there now."""
    leftovers = sorted(directory.glob(f".*{TEMPORARY_SUFFIX}"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers
