"""Shared behaviour of the entry points in scripts/. Imports only Hydra, mnist.errors,
mnist.paths, mnist.recipes, mnist.redact, mnist.overrides, mnist.disk, mnist.job_dir and
mnist.context, so
that Hydra answers --help and --cfg before torch is ever imported. Every script imports this
module first: from then on no log line shows a secret, and a script of one checkout never
runs the package of another."""

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
    """A bad config value or missing data is the user's to fix, not a bug: print one clear
    message and exit with status 2 instead of a traceback, leaving nothing on disk: the
    directory Hydra made for the job goes if the job wrote nothing into it, and so do the
    parents that leaves empty below the job config's paths.outputs. A job of a sweep says
    how to go on as its sweep does (sweep.resume=true)."""
    try:
        if cfg is not None:
            refuse_unresolvable(cfg)
        yield
    except (ConfigError, DataError, TrackingError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        if cfg is not None and not isinstance(e, TrackingError) and _in_sweep():
            # A job refused as it starts ends its sweep: its FAILED run there keeps why, as
            # for a job that crashed before its run opened (a store refused cannot).
            from mnist.sweeps.resume import record_failed_job

            record_failed_job(cfg, e)
        # paths.outputs may itself be the value that does not resolve.
        outputs = cfg and OmegaConf.select(cfg, "paths.outputs", throw_on_resolution_failure=False)
        discard_job_dir(outputs or None)
        sys.exit(2)
    except (CheckpointWriteError, RunFailed, TrainingDiverged) as e:
        # The run exists (FAILED) or its files could not be written: not a refusal (exit 2).
        # A sweep's job fails, and the sweep goes on to its other jobs, then exits 1.
        print(f"error: {redact(str(e))}", file=sys.stderr)
        if _in_sweep():
            raise
        sys.exit(1)
    except Interrupted as e:
        if isinstance(e, TrainingInterrupted) and _in_sweep():
            # The sweep's command goes on with the job, not the job's own: its launcher
            # says so, once (`run`; a joblib worker's exception goes back to it unprinted).
            raise SweepInterrupted(e.signum) from e
        sys.exit(_stopped(e))


def _in_sweep() -> bool:
    """Whether this is a job of a sweep (a multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _stopped(e: KeyboardInterrupt) -> int:
    """Says in one line how the command stopped and how to go on (a worker leaves that to
    its command); returns its exit status (130 for Ctrl-C)."""
    if not isinstance(e, WorkerInterrupted):
        print(f"stopped: {redact(str(e)) or 'interrupted'}", file=sys.stderr)
    return e.status if isinstance(e, Interrupted) else Interrupted.status


class RefuseFullDisk(Callback):
    """Hydra writes a job's config into the job's directory before the job runs, and on a
    full disk fails there with a traceback, leaving the directory behind: a full disk under
    paths.outputs is refused first, in one line (a hydra.callbacks entry of the config)."""

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
    teardown: freeing torch's and MLflow's modules object by object took ~2-3 s of every
    command on a 2-core CPU (docs/performance.md), paid again by each test that runs a
    script. mypy exits the same way (mypy.util.hard_exit). Nothing is lost: the exit comes
    after every library's own exit hook (registered later, so run earlier), with the logs
    and standard streams flushed. A crash (a traceback) exits the usual way."""
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
        # Outside a job's own handling (exit_on_user_error): a sweep's launcher stopped by a
        # signal (mnist/sweeps/stop.py), or Ctrl-C before a job could stop cleanly.
        code = _stopped(e)
    else:
        code = 0
    if code is None or isinstance(code, int):
        status.append(code or 0)
    sys.exit(code)


with exit_on_user_error():
    paths.refuse_another_checkout()
    sys.argv[1:] = overrides_without_credentials(sys.argv[1:])
