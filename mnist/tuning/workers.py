"""n_jobs > 1: the same tune command started n_jobs times as worker processes that share the
study's storage, each running one single-threaded trial at a time, exactly as tune.py
processes started by hand or by a cluster launcher would. This process waits for them and
passes a SIGINT/SIGTERM on to each (they run in sessions of their own, so that a Ctrl-C in
the terminal reaches them once, not twice: a second signal stops a trial at once)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mnist.overrides import override_key
from mnist.training.signals import install_handler

# Set in a worker's environment: it runs trials and leaves the study's summary (parent
# run, plots, preset) to the command that started it.
WORKER_ENV = "MNIST_TUNE_WORKER"


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def worker_command(argv: list[str], timeout_s: float | None, run_dir: Path) -> list[str]:
    """A worker's command line: this command's, one job, what is left of the time limit,
    one torch thread unless the command set device.num_threads, its own Hydra output
    directory."""
    args = [a for a in argv[1:] if override_key(a) not in ("n_jobs", "timeout_s", "hydra.run.dir")]
    args += ["n_jobs=1", f"hydra.run.dir={run_dir}"]
    if timeout_s is not None:
        args.append(f"timeout_s={timeout_s}")
    if not any(override_key(a) == "device.num_threads" for a in args):
        args.append("device.num_threads=1")
    return [sys.executable, argv[0], *args]


def run_workers(argv: list[str], n_jobs: int, output_dir: Path, deadline: float | None) -> None:
    """Run n_jobs workers of the command `argv` to their end (`deadline`: time.monotonic's);
    KeyboardInterrupt when a signal stopped them."""
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
