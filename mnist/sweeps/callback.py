"""A multirun as one MLflow experiment: a parent run opened before the first job starts and
closed after the last one ends, with every job's run as its child, named by the keys the
sweep varies. A Hydra callback, so every launcher (basic, joblib, submitit) gets it without
the jobs knowing which one ran them. The parent ends as the sweep's summary
(mnist/sweeps/summary.py)."""

from __future__ import annotations

import atexit
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mnist.cli import exit_on_user_error
from mnist.context import PARENT_RUN_FILE, SWEPT_KEYS_FILE
from mnist.overrides import task_overrides
from mnist.sweeps.failed import record_failed_job
from mnist.sweeps.internals import job_error
from mnist.sweeps.jobs import refuse_invalid_sweep, sweep_jobs
from mnist.sweeps.resume import SWEEP_HASH_TAG, reopen_sweep_parent, sweep_sha256
from mnist.sweeps.runs import FAILED_JOBS_TAG, JOBS_TAG, current_runs
from mnist.sweeps.stop import stop_jobs_on_signals
from mnist.tracking import store
from mnist.tracking.parent import children, end_parent, open_parent

log = logging.getLogger(__name__)


def swept_overrides(config: DictConfig) -> dict[str, str]:
    """{key: its values} for each key the sweep varies, e.g. {"model": "linear,fast"}: the
    command line's sweeps, then those of hydra.sweeper.params (experiment presets) that it
    does not override. Keys that only say where to write (override_dirname's exclude_keys)
    tell no two runs apart, so they are left out."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [*task_overrides(config.hydra), *(f"{key}={value}" for key, value in params.items())]
    excluded = set(config.hydra.job.config.override_dirname.exclude_keys)
    swept: dict[str, str] = {}
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    for override in parser.parse_overrides(lines):
        if override.is_sweep_override() and override.key_or_group not in excluded:
            swept.setdefault(override.key_or_group, ",".join(override.sweep_string_iterator()))
    return swept


def _not_finished(runs: list[Any], jobs: int) -> str:
    """What became of the jobs that did not finish, by their runs' status, e.g. ": 1 FAILED,
    1 with no run" (it stopped the sweep before its run opened, or never started)."""
    counts = Counter(run.info.status for run in runs if run.info.status != "FINISHED")
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    if without := jobs - len(runs):
        parts.append(f"{without} with no run")
    return f": {', '.join(parts)}" if parts else ""


class MlflowSweep(Callback):
    """Validates every job, then opens the parent run in `on_multirun_start` (a sweep with
    an invalid job is refused before it has a parent run; with sweep.resume=true, the
    stopped sweep's is reopened: mnist/sweeps/resume.py) and ends it in
    `on_multirun_end`: FINISHED only when every job launched has a FINISHED child (a job
    that fails before its run opens gets a FAILED one: `on_job_end`). Hydra skips
    `on_multirun_end` when a job raises, so an exit hook ends the parent (FAILED) in that
    case too. In between, SIGTERM or SIGINT to the launcher stops the jobs cleanly
    (mnist/sweeps/stop.py)."""

    def __init__(self) -> None:
        # tracking URI, experiment id, parent run id, sweep directory, number of jobs (None
        # under a sweeper other than Hydra's basic one: its jobs are known as it runs them)
        self._parent: tuple[str, str, str, Path, int | None] | None = None
        self._restore_signals: Callable[[], None] = lambda: None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        from mnist.tracking.ui import experiment_tags

        refuse_invalid_sweep(config)
        uri = store.tracking_uri(config.logger.tracking_uri, config.paths.mlruns)
        # Hydra turns a callback's exception into a warning and runs the jobs anyway: a
        # store that cannot work ends the sweep here, in one line, before any job starts.
        with exit_on_user_error():
            store.check_store(uri, experiment=config.logger.experiment)
        # Creates the store's schema and the experiment once, here, before parallel jobs
        # would race each other to do it.
        experiment_id = store.get_or_create_experiment(
            uri, config.logger.experiment, experiment_tags
        )
        sweep_dir = Path(config.hydra.sweep.dir)
        client = MlflowClient(uri)
        sweep_hash = sweep_sha256(config)
        run_id = (
            reopen_sweep_parent(client, experiment_id, sweep_hash)
            if config.sweep.resume is True
            else None
        )
        swept = swept_overrides(config)
        jobs = sweep_jobs(config)
        job_count = None if jobs is None else len(jobs)
        if run_id is None:
            tags = {
                "sweep.dir": str(sweep_dir),
                "hydra.overrides": " ".join(task_overrides(config.hydra)),
                SWEEP_HASH_TAG: sweep_hash,
            }
            name = f"sweep {'/'.join(sweep_dir.parts[-2:])}"
            run_id = open_parent(client, experiment_id, name, tags, swept)
        else:
            client.set_tag(run_id, "sweep.resumed_dir", str(sweep_dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEPT_KEYS_FILE).write_text("".join(f"{key}\n" for key in swept))
        if job_count is not None:
            client.set_tag(run_id, JOBS_TAG, str(job_count))
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id)
        self._parent = (uri, experiment_id, run_id, sweep_dir, job_count)
        atexit.register(self._end_parent)
        self._restore_signals = stop_jobs_on_signals(uri, experiment_id, run_id)
        log.info(
            "Sweep parent run %s in MLflow experiment %r (%s)",
            run_id,
            config.logger.experiment,
            uri,
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            record_failed_job(job_return.cfg, job_error(job_return))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._restore_signals()
        atexit.unregister(self._end_parent)
        self._end_parent(sweep_completed=True)

    def _end_parent(self, sweep_completed: bool = False) -> None:
        if self._parent is None:
            return
        from mlflow.tracking import MlflowClient

        from mnist.sweeps.summary import summarize_sweep
        from mnist.tracking.ui import how_to_open, show_children

        uri, experiment_id, run_id, sweep_dir, jobs = self._parent
        self._parent = None
        client = MlflowClient(uri)
        # A resumed sweep's parent counts each job once: not the runs restarted jobs replaced.
        runs = current_runs(children(client, experiment_id, run_id))
        finished = sum(run.info.status == "FINISHED" for run in runs)
        # A job with no run (it stopped the sweep before its run opened, or never started)
        # counts as not finished: the jobs are those Hydra launched, not the runs there are.
        jobs = jobs or len(runs)
        failed = jobs - finished
        client.set_tag(run_id, JOBS_TAG, str(jobs))
        client.set_tag(run_id, FAILED_JOBS_TAG, str(failed))
        if runs:  # no run, nothing to compare
            summarize_sweep(uri, experiment_id, run_id, sweep_dir / "compare")
        complete = sweep_completed and jobs and not failed
        end_parent(client, run_id, "FINISHED" if complete else "FAILED")
        log.info("Sweep parent run %s: %d jobs, %d not finished%s", run_id, jobs, failed,
                 _not_finished(runs, jobs))  # fmt: skip
        if hint := how_to_open(uri, show_children(client, experiment_id, run_id)):
            log.info("Compare the runs: %s", hint)
