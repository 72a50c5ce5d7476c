"""SIGINT/SIGTERM as a request to stop cleanly: the loop finishes its current step, writes
a resumable checkpoint and raises TrainingInterrupted."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Turn the first SIGINT/SIGTERM into a request the loop honours after the current
    step; a second one gets the default behaviour (immediate stop)."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False  # signal handlers can only be installed in the main thread
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum, frame):
        log.warning("%s received: stopping after the current step", signal.Signals(signum).name)
        requested.append(signum)
        signal.signal(signum, previous[signum])

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield lambda: bool(requested)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
