"""A multirun as one MLflow experiment: a parent run opened before the first job starts and
closed after the last one ends, with every job's run as its child. A Hydra callback, so
every launcher (basic, joblib, submitit) gets it without the jobs knowing which one ran them.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error
from mnist.tracking import store

log = logging.getLogger(__name__)

# Written into the sweep directory: a file reaches the jobs of every launcher, Slurm jobs on
# other nodes included (they share the sweep directory), where an environment variable may not.
PARENT_RUN_FILE = "mlflow_parent_run_id"


def parent_run_id(hydra_cfg: DictConfig) -> str | None:
    """The parent run of the sweep this job belongs to; None outside a multirun, or when
    the sweep ran without the MlflowSweep callback."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    path = Path(hydra_cfg.sweep.dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.is_file() else None


class MlflowSweep(Callback):
    """Opens the parent run in `on_multirun_start` and ends it in `on_multirun_end`:
    FINISHED only when every child finished. Hydra skips `on_multirun_end` when a job
    raises, so an exit hook ends the parent (FAILED) in that case too."""

    def __init__(self) -> None:
        self._parent: tuple[str, str, str] | None = None  # tracking URI, experiment, run

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = store.tracking_uri(config.logger.tracking_uri, config.paths.mlruns)
        # Hydra turns a callback's exception into a warning and runs the jobs anyway: a
        # store that cannot work ends the sweep here, in one line, before any job starts.
        with exit_on_user_error():
            store.check_store(uri)
        from mlflow.tracking import MlflowClient

        # Creates the store's schema and the experiment once, here, before parallel jobs
        # would race each other to do it.
        experiment_id = store.get_or_create_experiment(uri, config.logger.experiment)
        sweep_dir = Path(config.hydra.sweep.dir)
        run = MlflowClient(uri).create_run(
            experiment_id,
            run_name=f"sweep {'/'.join(sweep_dir.parts[-2:])}",
            tags={
                "sweep.dir": str(sweep_dir),
                "hydra.overrides": " ".join(config.hydra.overrides.task),
            },
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(run.info.run_id)
        self._parent = (uri, experiment_id, run.info.run_id)
        atexit.register(self._end_parent)
        log.info(
            "Sweep parent run %s in MLflow experiment %r (%s)",
            run.info.run_id,
            config.logger.experiment,
            uri,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._end_parent)
        self._end_parent(sweep_completed=True)

    def _end_parent(self, sweep_completed: bool = False) -> None:
        if self._parent is None:
            return
        from mlflow.tracking import MlflowClient

        uri, experiment_id, run_id = self._parent
        self._parent = None
        client = MlflowClient(uri)
        children = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
        )
        failed = sum(child.info.status != "FINISHED" for child in children)
        client.set_tag(run_id, "sweep.jobs", str(len(children)))
        client.set_tag(run_id, "sweep.failed_jobs", str(failed))
        finished = sweep_completed and children and not failed
        client.set_terminated(run_id, "FINISHED" if finished else "FAILED")
        log.info("Sweep parent run %s: %d jobs, %d not finished", run_id, len(children), failed)
