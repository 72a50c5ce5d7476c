"""A hyperparameter study in MLflow (mnist/tuning/): one parent run, reopened by each command
that continues the study, whose children are the trials' runs, each tagged with its trial's
state and none left RUNNING once its trial has ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist.tracking import store
from mnist.tracking.runs import git_state
from mnist.tracking.sweep_runs import log_to_parent
from mnist.tracking.ui import experiment_tags, how_to_open, show_children

# Optuna's trial states that are final.
ENDED = ("COMPLETE", "PRUNED", "FAIL")


def open_study_run(
    uri: str, experiment: str, study: str, tags: dict[str, str], params: dict[str, Any]
) -> str:
    """The study's parent run, RUNNING, with `tags` and where the code stood; its id."""
    experiment_id = store.retry_when_locked(
        lambda: store.get_or_create_experiment(uri, experiment, experiment_tags)
    )
    commit, dirty = git_state()
    tags = {"optuna.study": study, **tags, "git.commit": commit, "git.dirty": dirty}
    return store.open_parent(store.client(uri), experiment_id, f"study {study}", tags, params)


def reopen_study_run(uri: str, run_id: str) -> None:
    store.retry_when_locked(lambda: store.client(uri).update_run(run_id, status="RUNNING"))


def end_study_run(
    uri: str,
    run_id: str,
    status: str,
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: dict[Path, str | None],
    trial_states: dict[int, str],
) -> str | None:
    """Log where the study stands (the metrics' step: its number of trials), bring its trials'
    runs up to date with `trial_states` (Optuna's, by trial number, the one source of truth)
    and end it. Returns how to open its trials in the MLflow UI, where known."""
    log_to_parent(uri, run_id, tags, metrics, artifacts, step=len(trial_states))
    client = store.client(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    by_number = {str(number): state for number, state in trial_states.items()}
    for child in store.children(client, experiment_id, run_id):
        run, state = child.info.run_id, by_number.get(child.data.tags.get("optuna.trial", ""))
        if state is None:
            continue
        if child.data.tags.get("optuna.state") != state:
            store.retry_when_locked(lambda r=run, s=state: client.set_tag(r, "optuna.state", s))
        if child.info.status == "RUNNING" and state in ENDED:  # its process died (SIGKILL)
            store.retry_when_locked(lambda r=run: client.set_terminated(r, "FAILED"))
    store.retry_when_locked(lambda: client.set_terminated(run_id, status))
    return how_to_open(uri, show_children(client, experiment_id, run_id))
