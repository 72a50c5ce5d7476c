"""SIGINT/SIGTERM as a request to stop cleanly: the job checks for it where stopping is
safe (the loop after each step; the end of a run between its steps), writes or keeps a
resumable checkpoint and raises TrainingInterrupted."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# A stop request: the signal that asked to stop, None while none has.
StopRequested = Callable[[], signal.Signals | None]

# The request of the stop_on_signals scope in force, if any. Signal handlers belong to the
# process, so a nested scope (the loop's, inside the job's) shares the outer one's request:
# installing its own would turn the "second signal stops immediately" into another request.
_active: StopRequested | None = None


# The signals that ask a command to stop: Ctrl-C, and what schedulers (Slurm, Kubernetes,
# `kill`) send before they kill.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_handler(
    handler: Callable[[int, Any], None], signals: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> Callable[[], None]:
    """Install `handler` for `signals`; returns what puts the previous handlers back.
    Outside the main thread, where Python cannot install handlers, both do nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, handler) for sig in signals}

    def restore() -> None:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)

    return restore


@contextmanager
def stop_on_signals() -> Iterator[StopRequested]:
    """Turn the first SIGINT/SIGTERM into a request the job honours at its next safe
    point; a second one gets the default behaviour (immediate stop). What it yields says
    which signal asked (None before one did)."""
    global _active
    if _active is not None:
        yield _active
        return
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None  # signal handlers can only be installed in the main thread
        return
    requested: list[signal.Signals] = []
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def request_stop(signum: int, frame: Any) -> None:
        # Nothing is logged here: a handler runs between any two bytecodes, and logging
        # while the interrupted code was writing to the same file raised "reentrant call".
        requested.append(signal.Signals(signum))
        signal.signal(signum, previous[signum])

    announced: list[bool] = []

    def stop_requested() -> signal.Signals | None:
        """Asked at the safe points, which stop when it answers a signal: said once there."""
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
