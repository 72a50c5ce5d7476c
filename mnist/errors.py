"""Every exception type the package raises on purpose, in one module that imports nothing
heavy: the entry points catch these (mnist/cli.py) without importing torch or MLflow, and
each stage raises the one that names whose problem it is."""

import signal
from pathlib import Path


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the fix."""


class CheckpointError(ConfigError):
    """A model that cannot be loaded; the message names it, the problem and the fix. A
    ConfigError, as the checkpoint is a value the user chose (ckpt=, trainer.resume=)."""


class UnsafeConfigError(CheckpointError):
    """A config stored with a run (in a checkpoint, as an MLflow run's config.yaml) naming
    a `_target_` off the allowlist of mnist/targets.py: refused before anything is built,
    as building it could run any code."""


class ModelConfigError(ValueError):
    """A model config that cannot be built; the message says why."""


class UnsafeModelConfig(ModelConfigError):
    """A model config that would instantiate something other than this package's models."""


class DataError(RuntimeError):
    """The dataset cannot be obtained or does not match what was asked for."""


class TrainingDiverged(RuntimeError):
    """The training loss became inf or NaN: every later step would only train on garbage,
    so the run stops (FAILED) instead of finishing with a worthless model."""


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or written."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a permission); the message names the
    path and what was kept. The run fails, and resumes from the previous checkpoint."""


class RunFailed(RuntimeError):
    """A run stopped by what is around it, not by its config: its MLflow store failed or
    went away, or a disk filled. The message says what failed, where the run's files are
    kept and how to go on: the command that resumes it, where it has a last.pt."""


class ImageError(ValueError):
    """An input that is not a usable image of a digit; the message names it and why."""


class ExportError(RuntimeError):
    """The written file does not compute what the model computes: a fault of the exporter
    or the runtime, not of the config, so the file is deleted rather than shipped."""


class Interrupted(KeyboardInterrupt):
    """A command stopped on a signal, consistently: the message says how to go on, and the
    process exits with `status`. A KeyboardInterrupt, so the MLflow run is closed as
    KILLED, not FAILED."""

    status = 130  # a shell's status for a command that Ctrl-C (SIGINT) stopped


class TrainingInterrupted(Interrupted):
    """Training stopped on `signum` after writing a resumable checkpoint. In a sweep, the
    sweep's command resumes it, not this message's: the sweep says so (mnist/cli.py)."""

    def __init__(self, checkpoint: Path, signum: int) -> None:
        super().__init__(f"training interrupted; resume with trainer.resume={checkpoint}")
        self.checkpoint = checkpoint
        self.signum = signum


class SearchInterrupted(Interrupted):
    """A hyperparameter search stopped on a signal with its study consistent: the trial
    that was running is queued to run again when the same command continues the study."""

    def __init__(self, study: str) -> None:
        super().__init__(
            f"search interrupted; run the same command again to continue study {study!r}"
        )


class WorkerInterrupted(Interrupted):
    """A worker process of a search (mnist/tuning/search.py) stopped on a signal. It ends
    without a line: the command that started it says how to go on, once."""


class SweepInterrupted(Interrupted):
    """A sweep's launcher stopped on `signum` once its jobs' runs had stopped (KILLED, with
    a last.pt). It exits with the signal's conventional status, 128 + its number (143 for
    SIGTERM), as a shell reports a command that the signal ended."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"sweep stopped by {signal.Signals(signum).name}; run the same command with "
            "sweep.resume=true to continue it"
        )
        self.status = 128 + signum

    def __reduce__(self) -> tuple[type, tuple[int]]:
        # How pickle makes it again: a joblib worker's goes back to its launcher so (an
        # exception that cannot be unpickled breaks the pool: loky kills every worker).
        return SweepInterrupted, (self.status - 128,)
