"""A sweep in MLflow: its parent run, opened (or reopened by sweep.resume=true) and ended; the
runs of its jobs, and which of them count; a FAILED run for a job that failed before its own
run opened; the runs a restarted job supersedes; the summary its parent ends with. The Hydra
side of the sweep (mnist/sweeps/) calls these with plain values."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist.context import JobContext
from mnist.tracking import queries, store
from mnist.tracking.store import children, open_parent
from mnist.tracking.ui import experiment_tags, show_children

log = logging.getLogger(__name__)

# On the parent: the hash of the sweep's command line, how a resumed sweep finds it...
SWEEP_HASH_TAG = "sweep.overrides_sha256"
# ...the number of jobs the sweep launched (Hydra's list of them, whether or not each got a
# run), set when it starts; and, when it ends, how many of them did not finish.
JOBS_TAG = "sweep.jobs"
FAILED_JOBS_TAG = "sweep.failed_jobs"
# On the new run of a job that was restarted: the run(s) it replaces, comma-separated...
SUPERSEDES_TAG = "sweep.supersedes"
# ...and on each of those, the run that replaced it: compare and the parent's job count
# leave them out.
SUPERSEDED_TAG = "sweep.superseded_by"


def current_runs(runs: list[Any]) -> list[Any]:
    """The training runs that count: without those a restarted job's new run superseded,
    and without runs that trained no model (a sweep's parent, compare's summaries)."""
    return [run for run in runs if SUPERSEDED_TAG not in run.data.tags and "model" in run.data.tags]


def partial_sweep(parent: Any, finished: int) -> str | None:
    """What a report on the sweep of the `parent` run must say when only `finished` of its
    jobs finished; None for a complete sweep, or a parent that does not count its jobs."""
    jobs = int(parent.data.tags.get(JOBS_TAG, 0))
    if finished >= jobs:
        return None
    return (
        f"sweep {parent.info.run_id} is incomplete: {finished} of its {jobs} jobs finished; "
        "the others failed or did not run"
    )


def open_sweep(
    uri: str, experiment: str, name: str, tags: dict[str, str], swept: dict[str, str],
    resume: bool, jobs: int | None,
) -> str:  # fmt: skip
    """The sweep's parent run: a new one with `tags` (sweep.dir and SWEEP_HASH_TAG among
    them) and the `swept` keys as params, or with `resume` the latest parent of the same
    sweep, running again. `jobs`: how many it launches, where known. Creates the store's
    schema and the experiment first, before parallel jobs would race each other to."""
    experiment_id = store.get_or_create_experiment(uri, experiment, experiment_tags)
    tracker = store.client(uri)
    same_sweep = f"tags.`{SWEEP_HASH_TAG}` = '{tags[SWEEP_HASH_TAG]}'"
    earlier = queries.latest_run(uri, experiment_id, same_sweep) if resume else None
    if earlier is None:
        if resume:
            log.info("sweep.resume=true: no earlier sweep of this command here; starting a new one")
        run_id = open_parent(tracker, experiment_id, name, tags, swept)
    else:
        run_id = earlier.info.run_id
        store.retry_when_locked(lambda: tracker.update_run(run_id, status="RUNNING"))
        tracker.set_tag(run_id, "sweep.resumed_dir", tags["sweep.dir"])
        log.info("sweep.resume=true: continuing sweep parent run %s", run_id)
    if jobs is not None:
        tracker.set_tag(run_id, JOBS_TAG, str(jobs))
    return run_id


def job_runs(
    uri: str, parent_run_id: str, config_hash: str | None = None, status: str | None = None
) -> list[Any]:
    """The runs under the sweep's parent run, oldest first; only those of the job whose
    config hashes to `config_hash`, or in `status`, if given."""
    from mnist.tracking.params import CONFIG_HASH_TAG  # imports torch

    tracker = store.client(uri)
    experiment_id = tracker.get_run(parent_run_id).info.experiment_id
    where = [f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}'"] if config_hash else []
    where += [f"attributes.status = '{status}'"] if status else []
    return children(tracker, experiment_id, parent_run_id, " and ".join(where))


def end_sweep(uri: str, parent_run_id: str, status: str) -> str:
    """Ends the parent run; returns the address of its runs' view (ui.show_children)."""
    tracker = store.client(uri)
    store.retry_when_locked(lambda: tracker.set_terminated(parent_run_id, status))
    experiment_id = tracker.get_run(parent_run_id).info.experiment_id
    return show_children(tracker, experiment_id, parent_run_id)


def record_failed_job(
    uri: str, parent_run_id: str, name: str, tags: dict[str, str], error: str
) -> str:
    """A FAILED child run of the sweep for a job that failed before its own run opened,
    whose description (what MLflow's UI shows on its page) is `error`; returns its id."""
    tracker = store.client(uri)
    experiment_id = tracker.get_run(parent_run_id).info.experiment_id
    tags = {
        store.PARENT_TAG: parent_run_id,
        **tags,
        "error": error,
        store.NOTE_TAG: f"Failed before its MLflow run opened: {error}",
    }
    run_id = store.retry_when_locked(
        lambda: tracker.create_run(experiment_id, run_name=name, tags=tags)
    ).info.run_id
    store.retry_when_locked(lambda: tracker.set_terminated(run_id, "FAILED"))
    return run_id


def mark_superseded(uri: str, ctx: JobContext, new_run_id: str) -> None:
    """Tag the runs a restarted job's new run replaces (mnist/sweeps/resume.py). One still
    RUNNING lost its process (SIGKILL, power loss) before it could end the run: it is ended
    FAILED."""
    tracker = store.client(uri)
    for run_id in filter(None, ctx.extra_tags.get(SUPERSEDES_TAG, "").split(",")):
        store.retry_when_locked(
            lambda run_id=run_id: tracker.set_tag(run_id, SUPERSEDED_TAG, new_run_id)
        )
        if tracker.get_run(run_id).info.status == "RUNNING":
            store.retry_when_locked(lambda run_id=run_id: tracker.set_terminated(run_id, "FAILED"))


def log_to_parent(
    uri: str, parent_run_id: str, tags: dict[str, str], metrics: dict[str, float] | None = None,
    paths: Sequence[Path] = (),
) -> None:  # fmt: skip
    """Tags, metrics (step 0) and files onto the sweep's parent run as it ends: its count of
    jobs (partial_sweep reads it), then its summary."""
    from mlflow.entities import Metric, RunTag

    tracker = store.client(uri)
    for path in paths:
        tracker.log_artifact(parent_run_id, str(path))
    timestamp = int(1000 * time.time())
    logged = [Metric(key, value, timestamp, 0) for key, value in (metrics or {}).items()]
    run_tags = [RunTag(key, value) for key, value in tags.items()]
    tracker.log_batch(parent_run_id, metrics=logged, tags=run_tags)
