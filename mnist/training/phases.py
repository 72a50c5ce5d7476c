"""Where a run's seconds go: each phase of a training job timed back to back, logged with the
run as metrics time/<phase>_s, so that scripts/startup.py reads a run's fixed cost from the
run itself."""

from __future__ import annotations

import os
import time

# Set by whoever starts the process to the time.time() of its start (scripts/startup.py
# does): the job then also logs time/imports_s, from then to the start of the job
# (interpreter, imports, Hydra's composition of the config).
LAUNCHED_AT_ENV = "MNIST_LAUNCHED_AT"

# Its metrics' names: time/<phase>_s.
PHASE_PREFIX = "time/"

# The phases of a job in order (mnist/job.py).
PHASES = (
    "imports", "data", "model", "preview", "mlflow_setup", "training", "evaluation",
    "model_logging", "reports",
)  # fmt: skip


def phase_metric(phase: str) -> str:
    """The metric a run logs a phase's seconds as: time/<phase>_s."""
    return f"{PHASE_PREFIX}{phase}_s"


class PhaseClock:
    """Laps: each phase is the time since the previous lap, so the phases cover the job
    from its start to the last lap without a gap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        # Read once: a process that runs several jobs (a sweep, a study) was launched once.
        if launched := os.environ.pop(LAUNCHED_AT_ENV, None):
            self.seconds["imports"] = time.time() - float(launched)
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now

    def metrics(self) -> dict[str, float]:
        return {phase_metric(phase): seconds for phase, seconds in self.seconds.items()}
