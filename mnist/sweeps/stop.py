"""SIGTERM to a sweep's launcher (`kill <pid>`, a preempted cluster job) stops the sweep's
jobs as Ctrl-C in its terminal would, so that `sweep.resume=true` can continue it. Python
would otherwise end the launcher at once: its parent run stays RUNNING and joblib's worker
processes, which a signal to the launcher does not reach, go on training the queued jobs
as orphans. So the launcher forwards the stop to its workers, waits for their runs to end
(KILLED, with a last.pt), and then stops itself. Ctrl-C (SIGINT) reaches the workers from
the terminal: the launcher only waits for them, where joblib would kill them mid-stop.
Either way the launcher ends in one line, with the signal's status (143, 130)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from mnist.errors import SweepInterrupted
from mnist.sweeps.internals import joblib_workers
from mnist.tracking.sweep_runs import job_runs
from mnist.training.signals import install_handler

log = logging.getLogger(__name__)

# How long the launcher waits for its workers' runs to stop cleanly: a step and a
# checkpoint. Past it, joblib kills them, and they resume from their previous last.pt.
GRACE_S = 60.0


def _running_jobs(uri: str, parent_run_id: str) -> set[str]:
    return {run.info.run_id for run in job_runs(uri, parent_run_id, status="RUNNING")}


def _forward_ctrl_c(workers: list[int]) -> None:
    """SIGINT, as Ctrl-C sends it: a job stops cleanly at its next step, and a worker
    between jobs gets a KeyboardInterrupt rather than dying at once, which would make loky
    kill the other workers mid-checkpoint."""
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)


def stop_jobs_on_signals(uri: str, parent_run_id: str) -> Callable[[], None]:
    """Install the launcher's SIGTERM and SIGINT handler; returns what puts the previous
    ones back. In the basic launcher the job runs in this process, and its own handler
    stops it cleanly while it trains (mnist/training/signals.py); this one acts between
    the jobs' steps."""

    def stop(signum: int, frame: Any) -> None:
        restore()  # a second signal ends the launcher at once
        workers = joblib_workers()
        name = signal.Signals(signum).name
        log.warning("%s: stopping the sweep (%d worker processes)", name, len(workers))
        if workers:
            running = _running_jobs(uri, parent_run_id)
            if signum == signal.SIGTERM:  # Ctrl-C's SIGINT reached them from the terminal
                _forward_ctrl_c(workers)
            deadline = time.monotonic() + GRACE_S
            while running and time.monotonic() < deadline:
                time.sleep(0.5)
                running &= _running_jobs(uri, parent_run_id)
        raise SweepInterrupted(signum)

    restore = install_handler(stop)
    return restore
