"""SIGTERM to a sweep's launcher stops its jobs as Ctrl-C would, so that sweep.resume=true can
continue it: else the parent stays RUNNING and joblib's workers train on as orphans."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from mnist.errors import SweepInterrupted
from mnist.tracking.sweep_runs import job_runs
from mnist.training.signals import install_handler

log = logging.getLogger(__name__)

# How long the launcher waits for its workers' runs to stop cleanly: a step and a
# checkpoint. Past it, joblib kills them, and they resume from their previous last.pt.
GRACE_S = 60.0


def joblib_workers() -> list[int]:
    """Loky's workers, read from its private executor (the only record of them)."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    return list(getattr(executor, "_processes", None) or {})


def _running_jobs(uri: str, parent_run_id: str) -> set[str]:
    return {run.info.run_id for run in job_runs(uri, parent_run_id, status="RUNNING")}


def stop_jobs_on_signals(uri: str, parent_run_id: str) -> Callable[[], None]:
    """Installs the launcher's SIGTERM and SIGINT handler: it forwards the stop, waits for the
    runs to end KILLED and raises; returns what puts the previous handlers back."""

    def stop(signum: int, frame: Any) -> None:
        restore()  # a second signal ends the launcher at once
        workers = joblib_workers()
        name = signal.Signals(signum).name
        log.warning("%s: stopping the sweep (%d worker processes)", name, len(workers))
        if workers:
            # SIGINT as Ctrl-C sends it (which reached them from the terminal already): a
            # worker keeps it between jobs and starts no other (MlflowSweep.on_job_start),
            # where dying at once would make loky kill the others mid-checkpoint.
            for pid in workers if signum == signal.SIGTERM else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
            # Also the runs opened since: a job set up as the stop came stops at its first step.
            deadline = time.monotonic() + GRACE_S
            while _running_jobs(uri, parent_run_id) and time.monotonic() < deadline:
                time.sleep(0.5)
        raise SweepInterrupted(signum)

    restore = install_handler(stop)
    return restore
