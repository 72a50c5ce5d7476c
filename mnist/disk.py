"""Whether a disk has room for a job to start, checked before anything is written to it:
on a full disk, Hydra's first write (the job's config) fails with a traceback and leaves
the job's directory behind, and MLflow's first (the store's schema, a run) with three. A
run needs more room than this (checkpoints, reports), and says so in one line when a write
fails later (mnist/job.py)."""

import os
from pathlib import Path

MIN_FREE_BYTES = 1 << 20


def too_full(path: str | Path) -> str | None:
    """Why the disk that `path` is on, or would be created on, is too full for a job to
    start ("0 KiB free at /mnt/data, ..."); None when it has room for this user."""
    path = Path(path).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    disk = os.statvfs(existing)
    free = disk.f_bavail * disk.f_frsize
    if free >= MIN_FREE_BYTES:
        return None
    return f"{free // 1024} KiB free at {existing}, a job needs {MIN_FREE_BYTES // 1024} KiB"
