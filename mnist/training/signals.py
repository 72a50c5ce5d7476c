"""SIGINT/SIGTERM as a request to stop cleanly: the job checks for it where stopping is
safe (the loop after each step; the end of a run between its steps), writes or keeps a
resumable checkpoint and raises TrainingInterrupted."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# The request of the stop_on_signals scope in force, if any. Signal handlers belong to the
# process, so a nested scope (the loop's, inside the job's) shares the outer one's request:
# installing its own would turn the "second signal stops immediately" into another request.
_active: Callable[[], bool] | None = None


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Turn the first SIGINT/SIGTERM into a request the job honours at its next safe
    point; a second one gets the default behaviour (immediate stop)."""
    global _active
    if _active is not None:
        yield _active
        return
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False  # signal handlers can only be installed in the main thread
        return
    requested: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum, frame):
        log.warning("%s received: stopping at the next safe point", signal.Signals(signum).name)
        requested.append(signum)
        signal.signal(signum, previous[signum])

    def stop_requested() -> bool:
        return bool(requested)

    for sig in previous:
        signal.signal(sig, request_stop)
    _active = stop_requested
    try:
        yield stop_requested
    finally:
        _active = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
