"""A multirun as a parent MLflow run with every job's run as its child, ending as the sweep's
summary: a Hydra callback, so every launcher (basic, joblib, submitit) gets it."""

from __future__ import annotations

import atexit
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

# Private parts of Hydra, with no public equivalent in Hydra 1.3: tests/test_sweep_internals.py
# fails, naming the one, when an upgrade changes any of them.
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import run_and_report
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mnist.cli import exit_on_user_error
from mnist.context import PARENT_RUN_FILE, SWEPT_KEYS_FILE
from mnist.errors import ConfigError, SweepInterrupted
from mnist.overrides import refuse_unresolvable, task_overrides
from mnist.paths import REPO_ROOT
from mnist.sweeps.resume import record_failed_job, sweep_sha256
from mnist.sweeps.stop import stop_jobs_on_signals
from mnist.tracking import queries, store, sweep_runs
from mnist.tracking.store import NOTE_TAG
from mnist.tracking.sweep_runs import FAILED_JOBS_TAG, JOBS_TAG, SWEEP_HASH_TAG, current_runs
from mnist.tracking.ui import children_path, how_to_open
from mnist.training.signals import keep_stops_between_jobs, kept_stop

log = logging.getLogger(__name__)


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides in launch order, as Hydra's basic sweeper splits them; None under
    another sweeper."""
    if config.hydra.sweeper._target_ != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return None
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.params or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *task_overrides(config.hydra)])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def refuse_invalid_sweep(config: DictConfig) -> None:
    """Exit as a single run with the first invalid job's config would, before anything is
    written: status 1 with Hydra's own message for overrides that do not compose (Hydra
    ignores what a callback raises, so its reporting is called here), 2 for invalid values."""

    @exit_on_user_error(config)
    def validate() -> None:
        jobs = sweep_jobs(config) or []
        loader = GlobalHydra.instance().config_loader()
        configs = [loader.load_sweep_config(config, overrides) for overrides in jobs]
        from mnist.config import validate_config  # imports torch: after Hydra's own checks

        invalid = []
        for number, (overrides, job_config) in enumerate(zip(jobs, configs, strict=True)):
            try:
                refuse_unresolvable(job_config)
                validate_config(job_config)
            except ConfigError as e:
                swept = [o for o in overrides if any(o not in job for job in jobs)] or overrides
                invalid.append(f"sweep job {number} ({' '.join(swept)}): {e}")
        if invalid:
            raise ConfigError(
                f"{invalid[0]} [{len(invalid)} of {len(jobs)} jobs invalid; none was started]"
            )

    run_and_report(validate)


def swept_overrides(config: DictConfig) -> dict[str, str]:
    """{key: its values} for each key the sweep varies, e.g. {"model": "linear,fast"};
    where-to-write keys tell no two runs apart."""
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
    """E.g. ": 1 FAILED, 1 with no run"."""
    counts = Counter(run.info.status for run in runs if run.info.status != "FINISHED")
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    if without := jobs - len(runs):
        parts.append(f"{without} with no run")
    return f": {', '.join(parts)}" if parts else ""


def summarize_sweep(uri: str, experiment: str, parent_run_id: str, output_dir: Path) -> None:
    """The parent run as the sweep's summary: its comparison as artifacts, a description
    opening with the winner, each row's mean ± std. A failure is only logged."""
    from mnist.reporting import table
    from mnist.reporting.compare import load_references, write_comparison  # imports torch

    try:
        references = load_references(OmegaConf.load(REPO_ROOT / "conf" / "compare.yaml"))
        rows, paths, markdown, describe = write_comparison(
            uri, experiment, parent_run_id, None, None, references, output_dir
        )
        log.info("%s", markdown.split("\n\n")[1])  # the table, without its notes
        experiment_id = queries.experiment_id(uri, experiment)
        about = (
            f"[Open this sweep's runs]({children_path(experiment_id, parent_run_id)}), best "
            "validation first. The whole table (table.md, table.csv, chart.png): Artifacts."
        )
        note = {NOTE_TAG: describe(about)}
        metrics = table.summary_metrics(rows)
        sweep_runs.log_to_parent(uri, parent_run_id, note, metrics, dict.fromkeys(paths))
    except Exception as e:  # the parent must still end with its status
        log.warning("The sweep's summary could not be made: %s", e)


class MlflowSweep(Callback):
    """Validates every job, then opens the parent run; ends it FINISHED only when every job
    launched has a FINISHED child. Hydra skips `on_multirun_end` when a job raises, so an
    exit hook ends the parent (FAILED) then."""

    # tracking URI, experiment, parent run id, sweep directory, number of jobs (or None)
    _parent: tuple[str, str, str, Path, int | None] | None = None
    _launcher_pid: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_invalid_sweep(config)
        uri = store.tracking_uri(config.logger.tracking_uri, config.paths.mlruns)
        # Hydra turns a callback's exception into a warning and runs the jobs anyway: a
        # store that cannot work ends the sweep here, in one line, before any job starts.
        with exit_on_user_error():
            store.check_store(uri, experiment=config.logger.experiment)
        sweep_dir = Path(config.hydra.sweep.dir)
        swept = swept_overrides(config)
        job_count = None if (jobs := sweep_jobs(config)) is None else len(jobs)
        tags = {
            "sweep.dir": str(sweep_dir),
            "hydra.overrides": " ".join(task_overrides(config.hydra)),
            SWEEP_HASH_TAG: sweep_sha256(config),
        }
        name = f"sweep {'/'.join(sweep_dir.parts[-2:])}"
        experiment, resume = config.logger.experiment, config.sweep.resume is True
        run_id = sweep_runs.open_sweep(uri, experiment, name, tags, swept, resume, job_count)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEPT_KEYS_FILE).write_text("".join(f"{key}\n" for key in swept))
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id)
        self._parent = (uri, experiment, run_id, sweep_dir, job_count)
        self._launcher_pid = os.getpid()
        atexit.register(self._end_parent)
        self._restore_signals = stop_jobs_on_signals(uri, run_id)
        log.info("Sweep parent run %s in MLflow experiment %r (%s)", run_id, experiment, uri)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A joblib worker keeps a stop that its launcher forwarded between two jobs, and
        starts no job after it (a BaseException, which Hydra does not turn into a warning)."""
        launcher = OmegaConf.select(config, "hydra.launcher._target_") or ""
        if "joblib" not in launcher or os.getpid() == self._launcher_pid:
            return  # jobs in the launcher's own process stop with it
        keep_stops_between_jobs()
        if signum := kept_stop():
            raise SweepInterrupted(signum)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            # The public `return_value` raises it, after writing a line of its own to stderr.
            record_failed_job(job_return.cfg, job_return._return_value)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._restore_signals()
        atexit.unregister(self._end_parent)
        self._end_parent(sweep_completed=True)

    def _end_parent(self, sweep_completed: bool = False) -> None:
        if self._parent is None:
            return
        uri, experiment, run_id, sweep_dir, jobs = self._parent
        self._parent = None
        # A resumed sweep's parent counts each job once: not the runs restarted jobs replaced.
        runs = current_runs(sweep_runs.job_runs(uri, run_id))
        finished = sum(run.info.status == "FINISHED" for run in runs)
        # A job with no run (it stopped the sweep, or never started) counts as not finished.
        jobs = jobs or len(runs)
        failed = jobs - finished
        sweep_runs.log_to_parent(uri, run_id, {JOBS_TAG: str(jobs), FAILED_JOBS_TAG: str(failed)})
        if runs:  # no run, nothing to compare
            summarize_sweep(uri, experiment, run_id, sweep_dir / "compare")
        complete = sweep_completed and jobs and not failed
        view = sweep_runs.end_sweep(uri, run_id, "FINISHED" if complete else "FAILED")
        log.info("Sweep parent run %s: %d jobs, %d not finished%s", run_id, jobs, failed,
                 _not_finished(runs, jobs))  # fmt: skip
        if hint := how_to_open(uri, view):
            log.info("Compare the runs: %s", hint)
