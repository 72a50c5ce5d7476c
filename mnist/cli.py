"""Shared behaviour of the entry points in scripts/, which import it first: no log line shows
a secret, and a script never runs another checkout's package. Imports no torch, so that Hydra
answers --help and --cfg quickly."""

import atexit
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mnist import (
    disk,
    paths,  # registers the ${repo_root:} resolver the configs use
    recipes,  # noqa: F401 (registers recipe=cpu/<model> for every model)
)
from mnist.errors import (
    CheckpointWriteError,
    ConfigError,
    DataError,
    Interrupted,
    RunFailed,
    SweepInterrupted,
    TrackingError,
    TrainingDiverged,
    TrainingInterrupted,
    WorkerInterrupted,
)
from mnist.job_dir import discard_job_dir
from mnist.overrides import refuse_unresolvable
from mnist.redact import overrides_without_credentials, redact, redact_log_records

redact_log_records()


@contextmanager
def exit_on_user_error(cfg: DictConfig | None = None) -> Iterator[None]:
    """A bad config value or missing data is the user's to fix: one line and exit 2, leaving
    nothing on disk (the job's directory goes if the job wrote nothing into it)."""
    try:
        if cfg is not None:
            refuse_unresolvable(cfg)
        yield
    except (ConfigError, DataError, TrackingError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        if cfg is not None and not isinstance(e, TrackingError) and _in_sweep():
            # A job refused as it starts ends its sweep: a FAILED run there keeps why.
            from mnist.sweeps.resume import record_failed_job

            record_failed_job(cfg, e)
        # paths.outputs may itself be the value that does not resolve.
        outputs = cfg and OmegaConf.select(cfg, "paths.outputs", throw_on_resolution_failure=False)
        discard_job_dir(outputs or None)
        sys.exit(2)
    except (CheckpointWriteError, RunFailed, TrainingDiverged) as e:
        # Not a refusal: the run exists (FAILED). A sweep goes on to its other jobs.
        print(f"error: {redact(str(e))}", file=sys.stderr)
        if _in_sweep():
            raise
        sys.exit(1)
    except Interrupted as e:
        if isinstance(e, TrainingInterrupted) and _in_sweep():
            # The sweep's command goes on with the job: its launcher says so, once.
            raise SweepInterrupted(e.signum) from e
        sys.exit(_stopped(e))


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _stopped(e: KeyboardInterrupt) -> int:
    """Says how the command stopped and how to go on (a worker leaves that to its command);
    returns its exit status."""
    if not isinstance(e, WorkerInterrupted):
        print(f"stopped: {redact(str(e)) or 'interrupted'}", file=sys.stderr)
    return e.status if isinstance(e, Interrupted) else Interrupted.status


class RefuseFullDisk(Callback):
    """Refuses a full disk under paths.outputs in one line, before Hydra writes the job's
    config there (and fails with a traceback, leaving the directory behind)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_user_error():
            if problem := disk.too_full(config.paths.outputs):
                raise ConfigError(
                    f"paths.outputs={config.paths.outputs} is on a full disk ({problem}); "
                    "free some space or set paths.outputs to another disk"
                )

    on_multirun_start = on_run_start


def run(main: Callable[[], object]) -> NoReturn:
    """Runs a script's Hydra main and exits with its status, skipping the interpreter's
    teardown (~2-3 s of freeing torch's and MLflow's modules on a 2-core CPU), as mypy does.
    The exit comes after every library's own exit hook (registered later, so run earlier),
    with the logs and streams flushed. A crash exits the usual way."""
    status: list[int] = []

    def exit_now() -> None:
        if status:
            logging.shutdown()  # its hook was registered first, so it would run after this
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status[0])

    atexit.register(exit_now)
    try:
        main()
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt as e:
        # A sweep's launcher stopped by a signal, or Ctrl-C before a job could stop cleanly.
        code = _stopped(e)
    else:
        code = 0
    if code is None or isinstance(code, int):
        status.append(code or 0)
    sys.exit(code)


with exit_on_user_error():
    paths.refuse_another_checkout()
    sys.argv[1:] = overrides_without_credentials(sys.argv[1:])
