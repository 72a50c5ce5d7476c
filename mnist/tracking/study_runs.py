"""A hyperparameter study in MLflow (mnist/tuning/): one parent run, opened by the process
that created the study and reopened by each command that continues it, whose children are
the trials' training runs. Each trial's run is tagged with its trial's state, and none is
left RUNNING once its trial has ended."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mnist.tracking.runs import git_state
from mnist.tracking.store import children, get_or_create_experiment, open_parent, retry_when_locked
from mnist.tracking.store import client as store_client
from mnist.tracking.ui import experiment_tags, how_to_open, show_children

# Optuna's trial states that are final.
ENDED = ("COMPLETE", "PRUNED", "FAIL")


def open_study_run(
    uri: str, experiment: str, study: str, tags: dict[str, str], params: dict[str, Any]
) -> str:
    """The study's parent run, RUNNING, with `tags` and where the code stood; its id."""
    experiment_id = retry_when_locked(
        lambda: get_or_create_experiment(uri, experiment, experiment_tags)
    )
    commit, dirty = git_state()
    tags = {"optuna.study": study, **tags, "git.commit": commit, "git.dirty": dirty}
    return open_parent(store_client(uri), experiment_id, f"study {study}", tags, params)


def reopen_study_run(uri: str, run_id: str) -> None:
    retry_when_locked(lambda: store_client(uri).update_run(run_id, status="RUNNING"))


def end_study_run(
    uri: str,
    run_id: str,
    status: str,
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: dict[Path, str | None],
    trial_states: dict[int, str],
) -> str | None:
    """Log where the study stands (`artifacts`: file -> folder among the run's artifacts;
    the metrics' step is its number of trials), bring its trials' runs up to date with
    `trial_states` (Optuna's, by trial number) and end it with `status`. Returns how to
    open its trials in the MLflow UI, where known."""
    from mlflow.entities import Metric, RunTag

    client = store_client(uri)
    now, step = int(time.time() * 1000), len(trial_states)
    retry_when_locked(
        lambda: client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
    )
    for path, folder in artifacts.items():
        retry_when_locked(lambda p=path, f=folder: client.log_artifact(run_id, str(p), f))
    experiment_id = client.get_run(run_id).info.experiment_id
    _sync_trial_runs(client, run_id, experiment_id, trial_states)
    retry_when_locked(lambda: client.set_terminated(run_id, status))
    return how_to_open(uri, show_children(client, experiment_id, run_id))


def _sync_trial_runs(client: Any, run_id: str, experiment_id: str, states: dict[int, str]) -> None:
    """Each trial's run gets its trial's state from the study, the one source of truth:
    states change after a run ends (a process that died leaves its trial to be failed by
    the heartbeat). A run still RUNNING whose trial has ended lost its process (SIGKILL,
    power loss) before it could end the run: it is ended FAILED here."""
    by_number = {str(number): state for number, state in states.items()}
    for child in children(client, experiment_id, run_id):
        run, state = child.info.run_id, by_number.get(child.data.tags.get("optuna.trial", ""))
        if state is None:
            continue
        if child.data.tags.get("optuna.state") != state:
            retry_when_locked(lambda r=run, s=state: client.set_tag(r, "optuna.state", s))
        if child.info.status == "RUNNING" and state in ENDED:
            retry_when_locked(lambda r=run: client.set_terminated(r, "FAILED"))
