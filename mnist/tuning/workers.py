"""n_jobs > 1: the tune command started n_jobs times as workers sharing the study. Each runs
in a session of its own, so that a Ctrl-C reaches it once (forwarded), not twice: a second
signal stops a trial at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mnist.overrides import override_key
from mnist.training.signals import install_handler

WORKER_ENV = "MNIST_TUNE_WORKER"


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def worker_command(argv: list[str], timeout_s: float | None, run_dir: Path) -> list[str]:
    """This command's line for one job, with the time left, one torch thread unless set, and
    its own output directory."""
    args = [a for a in argv[1:] if override_key(a) not in ("n_jobs", "timeout_s", "hydra.run.dir")]
    args += ["n_jobs=1", f"hydra.run.dir={run_dir}"]
    if timeout_s is not None:
        args.append(f"timeout_s={timeout_s}")
    if not any(override_key(a) == "device.num_threads" for a in args):
        args.append("device.num_threads=1")
    return [sys.executable, argv[0], *args]


def run_workers(argv: list[str], n_jobs: int, output_dir: Path, deadline: float | None) -> None:
    """Run n_jobs workers to their end; KeyboardInterrupt when a signal stopped them."""
    timeout_s = None if deadline is None else max(1.0, deadline - time.monotonic())
    env = {**os.environ, WORKER_ENV: "1"}
    processes = [
        subprocess.Popen(
            worker_command(argv, timeout_s, output_dir / f"worker_{i}"), env=env,
            start_new_session=True,
        )
        for i in range(n_jobs)
    ]  # fmt: skip

    def forward(signum: int, frame: object) -> None:
        for process in processes:
            process.send_signal(signum)  # nothing, for one that has ended

    restore = install_handler(forward)
    try:
        statuses = [process.wait() for process in processes]
    finally:
        restore()
    if 130 in statuses:
        raise KeyboardInterrupt
    if failed := [(i, s) for i, s in enumerate(statuses) if s != 0]:
        raise RuntimeError(
            f"worker processes failed (index, exit status): {failed}; their logs: "
            f"{output_dir}/worker_<index>/"
        )
