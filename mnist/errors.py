"""The exceptions the package raises on purpose, in a module that imports nothing heavy: the
entry points catch them (mnist/cli.py) before torch or MLflow load."""

import signal
from pathlib import Path


class ConfigError(ValueError):
    """A value the user chose (a config key, a model, a checkpoint) that cannot work; the
    message names it and the fix."""


class DataError(RuntimeError):
    """The dataset cannot be obtained or does not match what was asked for."""


class TrainingDiverged(RuntimeError):
    """The training loss became inf or NaN: the run fails rather than keep worthless weights."""


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or written."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a permission)."""


class RunFailed(RuntimeError):
    """A run stopped by its store or a full disk, not by its config; the message says where
    its files are and how to go on."""


class ImageError(ValueError):
    """An input that is not a usable image of a digit; the message names it and why."""


class ExportError(RuntimeError):
    """The exported file does not compute what the model computes, so it is deleted."""


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
    """A search's worker stopped on a signal; the command that started it says how to go on."""


class SweepInterrupted(Interrupted):
    """A sweep's launcher stopped on `signum`; it exits with 128 + signum, as a shell would."""

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
