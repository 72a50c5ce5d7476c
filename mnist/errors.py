"""The exceptions the package raises on purpose, in a module that imports nothing heavy: the
entry points catch them (mnist/cli.py) before torch or MLflow load."""

import signal
from pathlib import Path


class ConfigError(ValueError):
    """A value the user chose (a config key, a model, a checkpoint) that cannot work; the
    message names it and the fix. Also a stored config naming a `_target_` off the allowlist
    (mnist/targets.py): refused before anything is built, as building it could run any code."""


class DataError(RuntimeError):
    """The dataset cannot be obtained or does not match what was asked for."""


class TrainingDiverged(RuntimeError):
    """The training loss became inf or NaN: the run stops (FAILED) rather than finish with a
    worthless model."""


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or written."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a permission): the run fails, and
    resumes from the previous checkpoint."""


class RunFailed(RuntimeError):
    """A run stopped by its store or a full disk, not by its config; the message says where
    its files are and how to go on."""


class ImageError(ValueError):
    """An input that is not a usable image of a digit; the message names it and why."""


class ExportError(RuntimeError):
    """The written file does not compute what the model computes (a fault of the exporter or
    the runtime), so it is deleted rather than shipped."""


class Interrupted(KeyboardInterrupt):
    """A command stopped on a signal; the message says how to go on. A KeyboardInterrupt, so
    the MLflow run is closed as KILLED, not FAILED."""

    status = 130  # a shell's status for a command that Ctrl-C (SIGINT) stopped


class TrainingInterrupted(Interrupted):
    """Training stopped on `signum` after writing a resumable checkpoint."""

    def __init__(self, checkpoint: Path, signum: int) -> None:
        super().__init__(f"training interrupted; resume with trainer.resume={checkpoint}")
        self.checkpoint = checkpoint
        self.signum = signum


class WorkerInterrupted(Interrupted):
    """A worker process of a search (mnist/tuning/search.py) stopped on a signal. It ends
    without a line: the command that started it says how to go on, once."""


class SweepInterrupted(Interrupted):
    """A sweep's launcher stopped on `signum` once its jobs' runs had stopped (KILLED, with a
    last.pt). It exits with 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"sweep stopped by {signal.Signals(signum).name}; run the same command with "
            "sweep.resume=true to continue it"
        )
        self.status = 128 + signum

    def __reduce__(self) -> tuple[type, tuple[int]]:
        # A joblib worker's exception goes back to its launcher pickled; one that cannot be
        # unpickled breaks the pool (loky kills every worker).
        return SweepInterrupted, (self.status - 128,)
