"""Whether a disk has room for a job to start: on a full disk, Hydra's and MLflow's first
writes fail with tracebacks and leave directories behind."""

import os
from pathlib import Path

MIN_FREE_BYTES = 1 << 20


def too_full(path: str | Path) -> str | None:
    """Why the disk `path` is (or would be) on is too full for a job to start; None if not."""
    path = Path(path).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    disk = os.statvfs(existing)
    free = disk.f_bavail * disk.f_frsize
    if free >= MIN_FREE_BYTES:
        return None
    return f"{free // 1024} KiB free at {existing}, a job needs {MIN_FREE_BYTES // 1024} KiB"
