"""Where the MLflow store is, whether it works, and its experiments. No torch or MLflow import
at module level: the sweep callback and the scripts' start-up stay cheap."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mnist import disk
from mnist.errors import TrackingError
from mnist.redact import without_credentials
from mnist.tracking.server import check_server

PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"

# Runs must not phone home (and machines without internet must not wait on it).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Artifacts read back here are small files: a progress bar each is clutter.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# A tracking server that is down fails a command in seconds, not MLflow's 4 minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

SCHEMA_LOCK_TIMEOUT_S = 300


def tracking_uri(configured: str | None, mlruns_dir: str | Path) -> str:
    """A relative SQLite path is made absolute: MLflow would fail to place its artifacts."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path(mlruns_dir).resolve() / 'mlflow.db'}"
    path = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and path not in ("", ":memory:"):
        return f"sqlite:///{os.path.abspath(path)}"
    return without_credentials(uri, "logger.tracking_uri" if configured else "MLFLOW_TRACKING_URI")


T = TypeVar("T")


# Writes that collided with another process's and succeed a moment later: SQLite's busy
# timeout (5 s) that a loaded sweep exceeds, and two jobs inserting the same dataset at once.
COLLISIONS = ("database is locked", "UNIQUE constraint failed: datasets.")


def retry_when_locked(call: Callable[[], T], attempts: int = 8, first_wait_s: float = 0.2) -> T:
    for attempt in range(attempts - 1):
        try:
            return call()
        except Exception as e:  # MLflow wraps SQLAlchemy's errors, a server in RestException
            if not any(collision in str(e) for collision in COLLISIONS):
                raise
            time.sleep(first_wait_s * 2**attempt)
    return call()


class _Retrying:
    """An MlflowClient whose every call is retried on a collision."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: retry_when_locked(lambda: method(*args, **kwargs))


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return _Retrying(MlflowClient(uri, registry_uri=uri))


def children_filter(parent_run_id: str) -> str:
    return f"tags.`{PARENT_TAG}` = '{parent_run_id}'"


def children(client: Any, experiment_id: str, parent_run_id: str, where: str = "") -> list[Any]:
    """The runs under `parent_run_id`, oldest first; those matching `where` if given."""
    query = children_filter(parent_run_id) + (f" and {where}" if where else "")
    oldest_first = ["attributes.start_time ASC"]
    return client.search_runs([experiment_id], query, max_results=50000, order_by=oldest_first)


def open_parent(
    client: Any, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]
) -> str:
    from mlflow.entities import Param

    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
    return run_id


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """<db>.lock next to a SQLite store, for what two processes must not do at once: create
    the schema (on a process's first call) or register a model."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock, Timeout

    lock = f"{uri.removeprefix('sqlite:///')}.lock"
    try:
        with FileLock(lock, timeout=SCHEMA_LOCK_TIMEOUT_S):
            yield
    except Timeout as e:
        raise TrackingError(
            f"MLflow store {uri}: another process held {lock} for {SCHEMA_LOCK_TIMEOUT_S} s "
            "while creating the store or promoting a model; if none is running, delete the "
            "lock file"
        ) from e


def get_or_create_experiment(
    uri: str, name: str, tags: Callable[[str], dict[str, str]] | None = None
) -> str:
    """The id of experiment `name`, created if needed, with the `tags(experiment_id)`. A
    SQLite store's artifacts live next to it, not in the working directory."""
    from mlflow.exceptions import MlflowException

    location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        location = (db.parent / "artifacts" / re.sub(r"[^A-Za-z0-9._-]+", "_", name)).as_uri()
    with store_lock(uri):  # a process's first client opens the store (and caches it)
        tracker = client(uri)
    experiment = tracker.get_experiment_by_name(name)
    if experiment is None:
        try:
            tracker.create_experiment(name, artifact_location=location)
        except MlflowException:
            if tracker.get_experiment_by_name(name) is None:
                raise
        experiment = tracker.get_experiment_by_name(name)
    for key, value in (tags(experiment.experiment_id) if tags else {}).items():
        if experiment.tags.get(key) != value:
            tracker.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _sqlite_problem(db: Path) -> str | None:
    """Why the file `db` cannot be an MLflow store (read only): MLflow would fail late, with a
    traceback."""
    size = db.stat().st_size
    if size == 0:
        return None  # an empty database: MLflow creates the schema
    with db.open("rb") as file:
        header = file.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return "is not an SQLite database"
    page_size = int.from_bytes(header[16:18], "big")
    pages = int.from_bytes(header[28:32], "big")
    expected = (65536 if page_size == 1 else page_size) * pages
    if header[24:28] == header[92:96] and size < expected:  # the page count is valid
        return f"is truncated ({size} of its {expected} bytes)"
    try:
        with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as db_file:
            rows = db_file.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {row[0] for row in rows}
    except sqlite3.OperationalError:
        return None  # locked, or a journal to roll back: MLflow's to handle
    except sqlite3.DatabaseError as e:
        return f"is corrupt ({e})"
    if tables and not tables & {"experiments", "alembic_version"}:
        return "is an SQLite database of something else, not an MLflow store"
    return None


def _check_sqlite(uri: str, writes: bool, read_only_option: str | None) -> None:
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
    if path in ("", ":memory:"):
        raise TrackingError(
            f"MLflow store {uri} would keep runs in memory and lose them; name a file: "
            "sqlite:///<path>"
        )
    db = Path(path)
    existing = next(p for p in (db, *db.parents) if p.exists())
    if existing != db and not existing.is_dir():
        raise TrackingError(
            f"MLflow store {uri} cannot be created: {existing} is a file, not a directory"
        )
    if writes and not os.access(existing, os.W_OK):
        reader = f", or pass {read_only_option} to only read it" if read_only_option else ""
        raise TrackingError(
            f"MLflow store {uri} is not writable ({existing}); fix its permissions or "
            f"set logger.tracking_uri / MLFLOW_TRACKING_URI to a writable store{reader}"
        )
    if problem := disk.too_full(existing):
        raise TrackingError(
            f"MLflow store {uri} is on a full disk ({problem}); free some space, or set "
            "logger.tracking_uri / MLFLOW_TRACKING_URI to another store"
        )
    if existing == db and (problem := _sqlite_problem(db)):
        raise TrackingError(
            f"MLflow store {db} {problem}; it was left as it is: move it aside to start a "
            "new store, or set logger.tracking_uri / MLFLOW_TRACKING_URI to another one"
        )


def _check_database_driver(uri: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(uri).get_dialect()
        (dialect.import_dbapi if hasattr(dialect, "import_dbapi") else dialect.dbapi)()
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        raise TrackingError(
            f"MLflow store {uri} needs a database driver that is not installed "
            f"({e}); install it, or name the driver in the URI (e.g. mysql+pymysql://)"
        ) from e


def check_store(
    uri: str,
    *,
    writes: bool = True,
    read_only_option: str | None = None,
    experiment: str | None = None,
) -> None:
    """TrackingError before any side effect when runs could not be recorded (or with
    `writes=False` read): MLflow would retry for minutes or fail late."""
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if uri.startswith("sqlite:"):
        _check_sqlite(uri, writes, read_only_option)
    elif scheme in ("http", "https"):
        check_server(uri, experiment if writes else None)
    elif scheme.partition("+")[0] in ("postgresql", "mysql", "mssql"):
        _check_database_driver(uri)
    else:
        raise TrackingError(
            f"MLflow store {uri!r} is not supported (file stores and other schemes are not); "
            "use sqlite:///<path>, http(s)://<server>, or a postgresql/mysql/mssql database "
            "URI in logger.tracking_uri or MLFLOW_TRACKING_URI"
        )
