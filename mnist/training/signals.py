"""SIGINT/SIGTERM as a request to stop at the next safe point (the loop after each step, the
end of a run between its steps), which keeps a resumable checkpoint."""

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# The signal that asked to stop, None while none has.
StopRequested = Callable[[], signal.Signals | None]

# The request of the scope in force: a nested scope (the loop's, inside the job's) shares it,
# where a handler of its own would turn the second signal's immediate stop into a request.
_active: StopRequested | None = None

# Ctrl-C, and what schedulers (Slurm, Kubernetes, `kill`) send before they kill.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# In a process that runs job after job (keep_stops_between_jobs), the stop it received: it
# outlives the job it came in, so that no later job starts. None in any other process.
_kept: list[signal.Signals] | None = None


def install_handler(handler: Callable[[int, Any], None]) -> Callable[[], None]:
    """Install `handler` for SIGINT/SIGTERM; returns what puts the previous handlers back.
    Both do nothing outside the main thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)

    return restore


def keep_stops_between_jobs() -> None:
    """In a joblib sweep's worker: a stop that arrives between two jobs, or before a job's
    own scope, is kept for the jobs that follow. Python's default handler raised a
    KeyboardInterrupt wherever the worker was, and dropped it inside a weakref callback: the
    worker went on to its next job, whose run stayed RUNNING when the launcher ended."""
    global _kept
    if _kept is None:
        _kept = []
        install_handler(_keep)


def _keep(signum: int, frame: Any) -> None:
    if _kept:  # a second signal stops at once
        raise KeyboardInterrupt
    _kept.append(signal.Signals(signum))


def kept_stop() -> signal.Signals | None:
    """The stop a worker keeps from an earlier job, if any."""
    return _kept[0] if _kept else None


@contextmanager
def stop_on_signals() -> Iterator[StopRequested]:
    """The first SIGINT/SIGTERM becomes a request; a second one stops at once. In a worker
    that keeps stops, one kept already is the request."""
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield _active or (lambda: None)
        return
    requested: list[signal.Signals] = [] if _kept is None else _kept
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def request_stop(signum: int, frame: Any) -> None:
        # No logging here: a handler runs between any two bytecodes, and logging while the
        # interrupted code wrote to the same file raised "reentrant call".
        requested.append(signal.Signals(signum))
        signal.signal(signum, previous[signum])

    announced: list[bool] = []

    def stop_requested() -> signal.Signals | None:
        if requested and not announced:
            announced.append(True)
            log.warning("%s received: stopping at a safe point", requested[0].name)
        return requested[0] if requested else None

    restore = install_handler(request_stop)
    _active = stop_requested
    try:
        yield stop_requested
    finally:
        _active = None
        restore()
