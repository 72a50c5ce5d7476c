"""An MLflow server or UI in a subprocess, for the tests that talk to one over HTTP."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mnist.paths import REPO_ROOT
from mnist.tracking import ui


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"mlflow server at {url} did not come up in {timeout_s} s")


@contextmanager
def web_server_that_is_not_mlflow(directory: Path) -> Iterator[str]:
    """`python -m http.server` serving `directory` with a file named health in it: it
    passes a health check and speaks no MLflow. Yields its URL."""
    (directory / "site").mkdir()
    (directory / "site" / "health").write_text("OK")
    port, log = free_port(), directory / "web-server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(directory / "site")],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server, log, timeout_s=60)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


# The administrator of a server started with auth=True.
ADMIN = ("admin", "admin-pw-1234")


def start_mlflow_server(
    tmp_path: Path, port: int, auth: bool = False, made: Path | None = None
) -> subprocess.Popen:
    """A real `mlflow server` on the store in tmp_path/server, up when this returns. In a
    process group of its own: it starts uvicorn, which `stop_server` ends with it (killing
    the first process alone leaves it serving). auth=True: MLflow's basic-auth app, with
    one user, ADMIN. made: an initialised store (conftest's `empty_mlflow_db`) to copy there
    where none is, sparing the server the schema's creation."""
    log = tmp_path / "server.log"
    if made is not None and not (tmp_path / "server" / "mlflow.db").exists():
        (tmp_path / "server").mkdir(parents=True, exist_ok=True)
        shutil.copy(made, tmp_path / "server" / "mlflow.db")
    # No job runner (as `make server` starts it): its ~6 processes, each importing MLflow,
    # ran the UI's GenAI jobs, which no test has, and took the cores the tests ran on.
    env, app = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, []
    if auth:
        (tmp_path / "server").mkdir(parents=True, exist_ok=True)
        config = tmp_path / "server" / "auth.ini"
        config.write_text(
            f"[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{tmp_path / 'server' / 'auth.db'}\n"
            f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env |= {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test"}
        app = ["--app-name", "basic-auth"]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "server" / "artifacts"), "--workers", "1",
         *app],
        stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )  # fmt: skip
    return _serving(server, port, log)


def start_make_server(target: str, store: Path, port: int) -> subprocess.Popen:
    """`make <target>` (ui or server, as users start them) on `store` at `port`, up when
    this returns, in a process group of its own (see start_mlflow_server); its log beside
    the store."""
    log = store.parent / f"make-{target}-{store.name}.log"
    make = subprocess.Popen(
        ["make", "-s", target, f"PORT={port}", f"STORE={store}"],
        cwd=REPO_ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    return _serving(make, port, log)


def _serving(server: subprocess.Popen, port: int, log: Path) -> subprocess.Popen:
    """`server` once it answers at `port`; if it never does, killed with its process group."""
    try:
        wait_until_up(f"http://127.0.0.1:{port}", server, log)
    except BaseException:
        stop_server(server, signal.SIGKILL)
        raise
    return server


def processes_of(group: int) -> list[Path]:
    """/proc/<pid> of each process of a process group."""

    def group_of(process: Path) -> int | None:
        try:
            return os.getpgid(int(process.name))
        except ProcessLookupError:
            return None

    return [p for p in Path("/proc").glob("[0-9]*") if group_of(p) == group]


def assert_no_job_runner_and_address_recorded(url: str, store: Path, group: int) -> None:
    """Of a `make ui` or `make server` (start_make_server) up at `url` on `store`: MLflow 3.17
    starts a job runner beside its server (10 processes, 2.1 GB in all); it hands the server
    the runner's storage before the server starts, so its absence is known as soon as the
    server answers. The address served is recorded beside the store, where commands find it
    for their links."""
    environments = [(p / "environ").read_bytes() for p in processes_of(group) if p.exists()]
    assert environments and not [e for e in environments if b"_MLFLOW_HUEY_STORAGE" in e]
    assert (store / ui.ADDRESS_FILE).read_text().strip() == url


def stop_server(server: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    """`signum` to every process of the server (SIGKILL: as if its machine died)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signum)
    server.wait(timeout=60)


@contextmanager
def mlflow_server(tmp_path: Path, auth: bool = False, made: Path | None = None) -> Iterator[str]:
    """The URL of a real `mlflow server` on a store in tmp_path/server, up until
    the block ends (auth, made: see start_mlflow_server)."""
    port = free_port()
    server = start_mlflow_server(tmp_path, port, auth, made)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(server)
