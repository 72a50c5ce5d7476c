"""Reading back what a job logged, and interrupting it with real signals, for the tests of
signals and resume."""

import contextlib
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient


def sqlite_rows(db: Path, query: str) -> list[tuple]:
    """`query` on an SQLite file read with sqlite3, so that polling costs the processes under
    test no imports; no rows while the file or its schema does not exist yet. Read-write: a
    process killed while writing leaves a journal that the next connection must roll back,
    which a read-only one cannot ("attempt to write a readonly database")."""
    if not db.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
            return connection.execute(query).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" not in str(e):
            raise
        return []


def wait_until(
    condition: Callable[[], object], process: subprocess.Popen, log: Path, waited_for: str
) -> None:
    """Poll `condition` (e.g. over sqlite_rows) while `process` runs: fails with the end of its
    `log` if it ends first, and after 10 minutes naming what did not happen."""
    deadline = time.monotonic() + 600
    while not condition():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{waited_for} in 10 minutes"
        time.sleep(0.2)


def store(tmp_path) -> MlflowClient:
    """The SQLite store the `tiny_cfg` fixture's runs log to."""
    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def runs_in(client: MlflowClient, experiment: str = "mnist") -> list:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def everything_logged(client: MlflowClient, run_id: str):
    """The run's status and every value of every metric, with its step."""
    run = client.get_run(run_id)
    history = {name: client.get_metric_history(run_id, name) for name in run.data.metrics}
    return run.info.status, {name: [(m.step, m.value) for m in h] for name, h in history.items()}


def assert_logged_once_per_step(client: MlflowClient, run_id: str) -> None:
    for name in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert len(steps) == len(set(steps)), (name, steps)


def signal_then(function, *signums):
    """`function`, its first call preceded by real signals: they arrive while the job is in
    that phase, as signals sent from outside would. Raised in the main thread, each is
    handled before the next is sent: os.kill lets the kernel hand one to another thread
    (MLflow's), and two of the same signal pending at once are handled once."""
    pending = list(signums)

    def wrapper(*args, **kwargs):
        while pending:
            signal.raise_signal(pending.pop(0))
        return function(*args, **kwargs)

    return wrapper
