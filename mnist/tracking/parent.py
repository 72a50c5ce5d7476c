"""A parent run: a sweep's (mnist/sweeps/) or a study's (mnist/tuning/), whose children are
its jobs' or trials' runs (MLflow nests a run under the one its `mlflow.parentRunId` tag
names). Both open, reopen, list and end theirs here: tags and params redacted, and every
call retried while another process holds SQLite's write lock."""

from __future__ import annotations

from typing import Any

from mnist.tracking.store import PARENT_TAG, retry_when_locked


def children_filter(parent_run_id: str) -> str:
    """The MLflow search filter for the runs under `parent_run_id`."""
    return f"tags.`{PARENT_TAG}` = '{parent_run_id}'"


def open_parent(
    client: Any, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]
) -> str:
    """A new RUNNING parent run; returns its id."""
    from mlflow.entities import Param

    run_id = retry_when_locked(
        lambda: client.create_run(experiment_id, run_name=name, tags=tags)
    ).info.run_id
    logged = [Param(key, str(value)) for key, value in params.items()]
    retry_when_locked(lambda: client.log_batch(run_id, params=logged))
    return run_id


def reopen_parent(client: Any, run_id: str) -> None:
    """A resumed sweep's or study's parent is running again until its command ends."""
    retry_when_locked(lambda: client.update_run(run_id, status="RUNNING"))


def children(client: Any, experiment_id: str, parent_run_id: str, where: str = "") -> list[Any]:
    """The runs under `parent_run_id`, oldest first; those matching the filter `where` if
    given."""
    query = children_filter(parent_run_id) + (f" and {where}" if where else "")
    oldest_first = ["attributes.start_time ASC"]
    return retry_when_locked(
        lambda: client.search_runs([experiment_id], query, max_results=50000, order_by=oldest_first)
    )


def end_parent(client: Any, run_id: str, status: str) -> None:
    retry_when_locked(lambda: client.set_terminated(run_id, status))
