"""Each phase of a training job timed back to back, logged as metrics time/<phase>_s, so
that scripts/startup.py reads a run's fixed cost from the run itself."""

import os
import time

# The time.time() at which the process started, set by its launcher (scripts/startup.py):
# the job then also logs time/imports_s.
LAUNCHED_AT_ENV = "MNIST_LAUNCHED_AT"
PHASE_PREFIX = "time/"
PHASES = (
    "imports", "data", "model", "preview", "mlflow_setup", "training", "evaluation",
    "model_logging", "reports",
)  # fmt: skip


def phase_metric(phase: str) -> str:
    return f"{PHASE_PREFIX}{phase}_s"


class PhaseClock:
    """Each phase is the time since the previous lap: together they cover the job."""

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
