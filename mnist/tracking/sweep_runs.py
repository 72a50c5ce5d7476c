"""Sweeps and studies in MLflow: a parent run whose children are the jobs' or trials' runs.
Called with plain values."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mnist.context import JobContext
from mnist.tracking import queries, store
from mnist.tracking.store import children, open_parent
from mnist.tracking.ui import experiment_tags, how_to_open, show_children

log = logging.getLogger(__name__)

# On the parent: the hash of its command line (how a resumed sweep finds it), the number of
# jobs launched and, when it ends, how many did not finish.
SWEEP_HASH_TAG = "sweep.overrides_sha256"
JOBS_TAG = "sweep.jobs"
FAILED_JOBS_TAG = "sweep.failed_jobs"
# On a restarted job's new run, the runs it replaces (comma-separated); on each of those,
# the run that replaced it, which compare and the parent's job count leave out.
SUPERSEDES_TAG = "sweep.supersedes"
SUPERSEDED_TAG = "sweep.superseded_by"


def current_runs(runs: list[Any]) -> list[Any]:
    """Not superseded, and with a model (not a parent or compare's summary)."""
    return [run for run in runs if SUPERSEDED_TAG not in run.data.tags and "model" in run.data.tags]


def partial_sweep(parent: Any, finished: int) -> str | None:
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
    """A new parent run, or with `resume` the latest of the same sweep running again. Creates
    the store's schema and the experiment before parallel jobs would race each other to."""
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
        tracker.update_run(run_id, status="RUNNING")
        tracker.set_tag(run_id, "sweep.resumed_dir", tags["sweep.dir"])
        log.info("sweep.resume=true: continuing sweep parent run %s", run_id)
    if jobs is not None:
        tracker.set_tag(run_id, JOBS_TAG, str(jobs))
    return run_id


def job_runs(
    uri: str, parent_run_id: str, config_hash: str | None = None, status: str | None = None
) -> list[Any]:
    from mnist.tracking.params import CONFIG_HASH_TAG  # imports torch

    tracker = store.client(uri)
    experiment_id = tracker.get_run(parent_run_id).info.experiment_id
    where = [f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}'"] if config_hash else []
    where += [f"attributes.status = '{status}'"] if status else []
    return children(tracker, experiment_id, parent_run_id, " and ".join(where))


def end_sweep(uri: str, parent_run_id: str, status: str) -> str:
    tracker = store.client(uri)
    tracker.set_terminated(parent_run_id, status)
    experiment_id = tracker.get_run(parent_run_id).info.experiment_id
    return show_children(tracker, experiment_id, parent_run_id)


def record_failed_job(
    uri: str, parent_run_id: str, name: str, tags: dict[str, str], error: str
) -> str:
    """A FAILED child run for a job that failed before its own run opened; returns its id."""
    tracker = store.client(uri)
    experiment_id = tracker.get_run(parent_run_id).info.experiment_id
    note = {store.NOTE_TAG: f"Failed before its MLflow run opened: {error}", "error": error}
    tags = {store.PARENT_TAG: parent_run_id, **tags, **note}
    run_id = tracker.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    tracker.set_terminated(run_id, "FAILED")
    return run_id


def mark_superseded(uri: str, ctx: JobContext, new_run_id: str) -> None:
    """Tags the runs a restarted job's new run replaces; one still RUNNING lost its process
    (SIGKILL) and ends FAILED."""
    tracker = store.client(uri)
    for run_id in filter(None, ctx.extra_tags.get(SUPERSEDES_TAG, "").split(",")):
        tracker.set_tag(run_id, SUPERSEDED_TAG, new_run_id)
        if tracker.get_run(run_id).info.status == "RUNNING":
            tracker.set_terminated(run_id, "FAILED")


def log_to_parent(
    uri: str, parent_run_id: str, tags: dict[str, str], metrics: dict[str, float] | None = None,
    artifacts: dict[Path, str | None] | None = None, step: int = 0,
) -> None:  # fmt: skip
    """Tags, metrics and files (file -> artifact folder) onto a parent run as it ends."""
    from mlflow.entities import Metric, RunTag

    tracker = store.client(uri)
    for path, folder in (artifacts or {}).items():
        tracker.log_artifact(parent_run_id, str(path), folder)
    timestamp = int(1000 * time.time())
    logged = [Metric(key, float(value), timestamp, step) for key, value in (metrics or {}).items()]
    run_tags = [RunTag(key, value) for key, value in tags.items()]
    tracker.log_batch(parent_run_id, metrics=logged, tags=run_tags)


def open_study_run(
    uri: str, experiment: str, study: str, tags: dict[str, str], params: dict[str, Any]
) -> str:
    """The study's parent run, RUNNING, with `tags` and where the code stood; its id."""
    from mnist.tracking.runs import git_state  # imports torch, which a sweep's parent needs not

    experiment_id = store.get_or_create_experiment(uri, experiment, experiment_tags)
    commit, dirty = git_state()
    tags = {"optuna.study": study, **tags, "git.commit": commit, "git.dirty": dirty}
    return store.open_parent(store.client(uri), experiment_id, f"study {study}", tags, params)


def reopen_study_run(uri: str, run_id: str) -> None:
    store.client(uri).update_run(run_id, status="RUNNING")


def end_study_run(
    uri: str, run_id: str, status: str, metrics: dict[str, float], tags: dict[str, str],
    artifacts: dict[Path, str | None], trial_states: dict[int, str],
) -> str | None:  # fmt: skip
    """Logs where the study stands (step: its number of trials), brings its trials' runs up to
    date with Optuna's `trial_states` (the one source of truth) and ends it; how to open it."""
    log_to_parent(uri, run_id, tags, metrics, artifacts, step=len(trial_states))
    client = store.client(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    by_number = {str(number): state for number, state in trial_states.items()}
    for child in store.children(client, experiment_id, run_id):
        run, state = child.info.run_id, by_number.get(child.data.tags.get("optuna.trial", ""))
        if state is None:
            continue
        if child.data.tags.get("optuna.state") != state:
            client.set_tag(run, "optuna.state", state)
        ended = state in ("COMPLETE", "PRUNED", "FAIL")
        if child.info.status == "RUNNING" and ended:  # its process died (SIGKILL)
            client.set_terminated(run, "FAILED")
    return how_to_open(uri, end_sweep(uri, run_id, status))
