"""Which runs of a sweep count, as its parent and its children's tags record them: what
compare, promote and the sweep's own end read. Imports nothing of the project, so that
every one of them can."""

from __future__ import annotations

from typing import Any

# On the parent: the number of jobs the sweep launched (Hydra's list of them, whether or not
# each got a run), set when it starts; and, when it ends, how many of them did not finish.
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
