"""The MLflow store as it really fails (issue 12): created by two runs at once, corrupt,
named by a relative or unsupported URI, a server that is down or dies mid-run. Real SQLite
files, servers and subprocesses; every refusal is one line, before any side effect."""

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist.cli import exit_on_user_error
from mnist.context import JobContext
from mnist.errors import TrackingError
from mnist.job import run_training
from mnist.metric_names import VAL_ACC
from mnist.paths import REPO_ROOT
from mnist.tracking import store
from tests.helpers import (
    TRAIN_SCRIPT,
    compose_config,
    tiny_overrides,
)
from tests.helpers.images import seven, to_uint8
from tests.helpers.runs import assert_logged_once_per_step
from tests.helpers.server import (
    ADMIN,
    assert_no_job_runner_and_address_recorded,
    free_port,
    mlflow_server,
    start_make_server,
    stop_server,
    web_server_that_is_not_mlflow,
)


def closed_port() -> int:
    """A localhost port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def finished_runs(db) -> list[str]:
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("mnist").experiment_id
    return [run.info.status for run in client.search_runs([experiment])]


def test_a_dataset_another_job_inserted_first_is_found_when_tried_again(tmp_path, empty_mlflow_db):
    """Two jobs logging the same dataset at once: the second insert fails (the error a
    tracking server returned in a submitit sweep) and, tried again, finds the first's."""
    from mlflow.entities import Dataset, DatasetInput

    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("sweep")
    first, second = (client.create_run(experiment).info.run_id for _ in range(2))
    test_set = DatasetInput(Dataset("mnist-test", "088fde4c", "local", '{"uri": "x"}'))
    client.log_inputs(first, [test_set])  # the other job's insert, between check and insert
    attempts = []

    def collided_once() -> None:
        attempts.append(second)
        if len(attempts) == 1:
            raise MlflowException(
                "BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: "
                "datasets.experiment_id, datasets.name, datasets.digest"
            )
        client.log_inputs(second, [test_set])

    store.retry_when_locked(collided_once, first_wait_s=0)
    assert len(attempts) == 2
    assert [i.dataset.name for i in client.get_run(second).inputs.dataset_inputs] == ["mnist-test"]

    # Any other constraint is a real error: raised at once.
    def another_constraint() -> None:
        raise MlflowException("UNIQUE constraint failed: runs.run_uuid")

    with pytest.raises(MlflowException, match="UNIQUE constraint failed: runs"):
        store.retry_when_locked(another_constraint, first_wait_s=0)


def corrupt(db, how: str, template) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    if how == "random bytes":
        db.write_bytes(np.random.default_rng(0).bytes(50_000))
    elif how == "truncated":
        data = template.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    elif how == "another program's database":
        import sqlite3

        db.unlink(missing_ok=True)
        with sqlite3.connect(db) as other:
            other.execute("CREATE TABLE contacts (name TEXT)")
        other.close()


@pytest.mark.parametrize("how", ["random bytes", "truncated", "another program's database"])
def test_a_corrupt_store_is_refused_at_start_and_left_as_it_is(
    tiny_cfg, tmp_path, empty_mlflow_db, how
):
    cfg = tiny_cfg()
    db = tmp_path / "mlruns" / "mlflow.db"
    corrupt(db, how, empty_mlflow_db)
    before = db.read_bytes()
    with pytest.raises(TrackingError) as refused:
        run_training(cfg, JobContext(output_dir=tmp_path / "o"))
    message = str(refused.value)
    assert message.startswith(f"MLflow store {db} ") and "left as it is" in message
    assert "\n" not in message
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]
    assert not (tmp_path / "o").exists()  # refused before the data was even loaded


def test_training_and_prediction_scripts_name_a_corrupt_store_in_one_line(
    synthetic_root, tmp_path, capsys
):
    """In-process, as scripts/train.py and scripts/predict.py run their jobs: in
    exit_on_user_error, whose status every script exits with through mnist.cli.run (as
    processes: the sweep below, tests/test_refusals.py)."""
    from mnist.inference.predict import run_prediction

    db = tmp_path / "mlruns" / "mlflow.db"
    corrupt(db, "random bytes", None)
    before = db.read_bytes()
    train = compose_config(tiny_overrides(synthetic_root, tmp_path))
    predict = compose_config([f"img={REPO_ROOT / 'README.md'}",
                              f"paths.mlruns={tmp_path / 'mlruns'}"], "predict")  # fmt: skip
    jobs = {
        "train": (train, lambda: run_training(train, JobContext(output_dir=tmp_path / "o"))),
        "predict": (predict, lambda: run_prediction(predict)),
    }
    for name, (cfg, job) in jobs.items():
        with pytest.raises(SystemExit) as exited, exit_on_user_error(cfg):
            job()
        assert exited.value.code == 2, name
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: MLflow store {db} "), lines
        assert "is not an SQLite database" in lines[0]
    assert db.read_bytes() == before


def test_a_relative_sqlite_uri_is_relative_to_the_working_directory(
    tiny_cfg, tmp_path, monkeypatch, empty_mlflow_db
):
    (tmp_path / "stores").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "stores" / "relative.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/relative.db")
    assert store.tracking_uri(None, "ignored") == f"sqlite:///{tmp_path}/stores/relative.db"
    result = run_training(tiny_cfg("trainer.epochs=1"), JobContext(output_dir=tmp_path / "o"))
    assert finished_runs(tmp_path / "stores" / "relative.db") == ["FINISHED"]
    run = MlflowClient(f"sqlite:///{tmp_path}/stores/relative.db").get_run(result["run_id"])
    assert run.info.artifact_uri.startswith((tmp_path / "stores" / "artifacts").as_uri())
    assert not (REPO_ROOT / "relative.db").exists()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:///{tmp}/file-store", "is not supported"),
        ("{tmp}/plain-directory", "is not supported"),
        ("databricks-uc", "is not supported"),
        ("sqlite://", "would keep runs in memory"),
        ("sqlite:///:memory:", "would keep runs in memory"),
        ("mysql://user@localhost/runs", "needs a database driver that is not installed"),
        ("postgresql+nodriver://localhost/runs", "needs a database driver"),
    ],
)
def test_unsupported_stores_are_refused_before_any_side_effect(tiny_cfg, tmp_path, uri, message):
    if uri.startswith("mysql:") and importlib.util.find_spec("MySQLdb"):
        pytest.skip("MySQL's default driver is installed here")
    uri = uri.format(tmp=tmp_path)
    cfg = tiny_cfg()
    cfg.logger.tracking_uri = uri
    with pytest.raises(TrackingError) as refused:
        run_training(cfg, JobContext(output_dir=tmp_path / "o"))
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "o").exists()  # refused before the data was even loaded
    assert not (tmp_path / "file-store").exists() and not (tmp_path / "plain-directory").exists()


def test_an_unreachable_server_fails_predict_and_a_sweep_within_seconds(
    tmp_path, monkeypatch, capsys
):
    """MLflow alone retried for minutes: predict.py without ckpt (>90 s), a sweep (4.5 min).
    The sweep as a script (its refusal is the launcher's, before any job); predict's job
    in-process, as scripts/predict.py runs it (exit_on_user_error)."""
    from mnist.inference.predict import run_prediction

    uri = f"http://127.0.0.1:{closed_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    sweep = ["-m", "seed=0,1", f"paths.outputs={tmp_path / 'outputs'}",
             f"data.root={tmp_path / 'data'}"]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *sweep],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    elapsed = {"sweep": time.monotonic() - started}
    assert result.returncode == 2, result.stderr[-3000:]
    lines = {"sweep": result.stderr.strip().splitlines()}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = compose_config([f"img={REPO_ROOT / 'README.md'}"], "predict")
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited, exit_on_user_error(cfg):
        run_prediction(cfg)
    elapsed["predict"] = time.monotonic() - started
    assert exited.value.code == 2
    lines["predict"] = capsys.readouterr().err.strip().splitlines()
    for name, printed in lines.items():
        assert len(printed) == 1 and "is unreachable" in printed[0], (name, printed)
        # Mostly Python and torch starting on a loaded 2-core machine; MLflow's own
        # retries would take minutes.
        assert elapsed[name] < 60, (name, elapsed)
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "outputs").exists()


class HealthyButUnavailable(BaseHTTPRequestHandler):
    """A tracking server that answers its health check and nothing else (503)."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_server_failing_after_its_health_check_is_refused_and_fails_within_seconds():
    """MLflow's own retries (7, doubling from 2 s) took about 4 minutes."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), HealthyButUnavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(TrackingError) as refused:
            store.check_store(uri)
        assert str(refused.value).startswith(f"{uri} is not a working MLflow tracking server")
        assert "HTTP 503" in str(refused.value) and "\n" not in str(refused.value)
        started = time.monotonic()
        with pytest.raises(MlflowException, match="503"):
            store.get_or_create_experiment(uri, "mnist")
        assert time.monotonic() - started < 20
    finally:
        server.shutdown()


def test_a_web_server_that_is_not_mlflow_is_refused_in_one_line(tmp_path):
    """`python -m http.server` on a directory with a file named health passes a health
    check; MLflow's client then failed with a 79-line traceback."""
    with web_server_that_is_not_mlflow(tmp_path) as uri, pytest.raises(TrackingError) as refused:
        store.check_store(uri)
    message = str(refused.value)
    assert message.startswith(f"{uri} is not a working MLflow tracking server: GET /api/2.0/")
    assert "answered HTTP 404, not MLflow JSON" in message and "\n" not in message


@pytest.mark.slow
def test_a_server_that_refuses_the_credentials_is_refused_before_anything_is_built(
    tmp_path, monkeypatch, capsys, caplog, empty_mlflow_db
):
    """Before, a 401, or a user who may read but not add runs to the experiment, passed the
    start-up check: data and model were built, then MLflow's client failed with a 40-line
    traceback and an outputs/ directory was left behind. The jobs run in-process, as
    scripts/train.py runs them; a sweep's refusal, as a script."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}

    def as_user(user: dict[str, str]) -> None:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(name, raising=False)
        for name, value in user.items():
            monkeypatch.setenv(name, value)

    def refused(uri: str, case: str, **user: str) -> str:
        outputs = tmp_path / case
        as_user(user)
        cfg = compose_config([f"data.root={tmp_path / 'never'}", f"paths.outputs={outputs}",
                              f"logger.tracking_uri={uri}", "device=cpu"])  # fmt: skip
        caplog.clear()
        logged, job = caplog.at_level(logging.WARNING), JobContext(output_dir=outputs / "job")
        with logged, pytest.raises(SystemExit) as exited, exit_on_user_error(cfg):
            run_training(cfg, job)
        assert exited.value.code == 2, case
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, (case, lines)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert not [*outputs.rglob("*")] and not (tmp_path / "never").exists()
        return lines[0]

    def refused_sweep(uri: str, **user: str) -> str:
        outputs = tmp_path / "reader sweep"
        trained = subprocess.run(
            [sys.executable, str(TRAIN_SCRIPT), "-m", "seed=0,1", f"data.root={tmp_path / 'never'}",
             f"paths.outputs={outputs}", f"logger.tracking_uri={uri}", "device=cpu"],
            capture_output=True, text=True, timeout=300, env={**env, **user},
        )  # fmt: skip
        assert trained.returncode == 2, trained.stderr[-2000:]
        lines = trained.stderr.strip().splitlines()
        assert len(lines) == 1, trained.stderr[-2000:]
        assert not [*outputs.rglob("*")] and not (tmp_path / "never").exists()
        return lines[0]

    with mlflow_server(tmp_path, auth=True, made=empty_mlflow_db) as url:
        host = url.removeprefix("http://")
        given = {"none": url, "a wrong password": f"http://{ADMIN[0]}:wrong@{host}"}
        for case, uri in given.items():
            line = refused(uri, case)
            assert line.startswith(f"error: MLflow tracking server {url} ")
            assert "(HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in line
            assert "wrong" not in line
        # The experiments are made by requests, not runs: each request costs the server
        # ~0.3 s of CPU checking the password.
        admin = {"MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1]}
        as_user(admin)
        experiment_id = MlflowClient(url).create_experiment("mnist")
        # Longer than any fixed read: an experiment's JSON grows with its tags (saved views).
        MlflowClient(url).set_experiment_tag(experiment_id, store.NOTE_TAG, "x" * 20_000)
        # A second user may read the administrator's experiment (the server's default
        # permission) but not add runs to it; an experiment of their own is theirs.
        reader = {"MLFLOW_TRACKING_USERNAME": "reader", "MLFLOW_TRACKING_PASSWORD": "pw-1234567890"}
        as_user(admin)
        get_app_client("basic-auth", tracking_uri=url).create_user(*reader.values())
        lines = {"run": refused(url, "reader run", **reader), "sweep": refused_sweep(url, **reader)}
        for case, line in lines.items():
            assert line == (
                f"error: MLflow tracking server {url} does not let user 'reader' add runs to "
                "experiment 'mnist': ask its owner for EDIT permission, or set "
                "logger.experiment to an experiment of your own"
            ), case
        # Their own experiment passes the check, new (theirs to create) and once it exists
        # (the probe's refusal for an invalid start time, not for the permission).
        as_user(reader)
        store.check_store(url, experiment="readers")
        MlflowClient(url).create_experiment("readers")
        store.check_store(url, experiment="readers")
        as_user(admin)
        admin_client = MlflowClient(url)
        by_experiment = {
            name: len(
                admin_client.search_runs([admin_client.get_experiment_by_name(name).experiment_id])
            )
            for name in ("mnist", "readers")
        }
        assert by_experiment == {"mnist": 0, "readers": 0}  # the checks created no run


# `$0` bind-mounted on itself and remounted read-only, in a user and mount namespace of the
# command's own: a store on a read-only mount. Root, whom file permissions do not stop,
# needs it too; and nothing outside the command sees the mount.
READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


@contextmanager
def read_only(directory) -> Iterator[list[str]]:
    """The prefix of a command that sees `directory` read-only; skips where no namespace
    can be made (user namespaces disabled)."""
    prefix = ["unshare", "--map-root-user", "--mount", "sh", "-c", READ_ONLY_MOUNT, str(directory)]
    probe = subprocess.run([*prefix, "touch", str(directory / "probe")], capture_output=True)
    if b"Read-only file system" not in probe.stderr:
        pytest.skip(f"no read-only mount can be made here: {probe.stderr.decode()[-300:]}")
    yield prefix


@pytest.mark.slow  # three scripts end to end: about 20 s on 2 cores
def test_commands_that_only_read_a_store_work_on_a_read_only_one(tiny_cfg, tmp_path):
    """predict and compare (without its summary run) only read the store; they refused a
    read-only one as not writable. A command that writes still refuses it, in one line
    that names the option to only read it."""
    run_id = run_training(tiny_cfg("trainer.epochs=1"), JobContext(tmp_path / "run"))["run_id"]
    Image.fromarray(to_uint8(seven())).save(tmp_path / "seven.png")
    mlruns = tmp_path / "mlruns"
    before = {p: p.read_bytes() for p in mlruns.rglob("*") if p.is_file()}
    commands = {
        "predict": ["predict.py", f"img={tmp_path / 'seven.png'}"],
        "compare": ["compare.py", "parent_run_id=all", "log_summary=false"],
        "compare-logged": ["compare.py", "parent_run_id=all"],
    }
    results = {}
    with read_only(mlruns) as prefix:
        for name, (script, *args) in commands.items():
            out = f"hydra.run.dir={tmp_path / name}"
            results[name] = subprocess.run(
                [*prefix, sys.executable, str(REPO_ROOT / "scripts" / script), *args,
                 f"paths.mlruns={mlruns}", out],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
    predicted, compared, refused = results.values()
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert f"model: run {run_id}" in predicted.stderr and "seven.png: " in predicted.stdout
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert (tmp_path / "compare" / "table.md").is_file()
    assert refused.returncode == 2, refused.stderr[-3000:]
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"error: MLflow store sqlite:///{mlruns / 'mlflow.db'} is not writable")
    assert line.endswith("or pass log_summary=false to only read it")
    assert {p: p.read_bytes() for p in mlruns.rglob("*") if p.is_file()} == before


# A real tracking server (`make server`) started twice, MLflow's retries against it while
# it is down, and a resume: about a minute on 2 cores.
@pytest.mark.slow
def test_a_server_killed_mid_run_ends_it_in_one_line_whose_command_resumes_it(
    synthetic_root, tmp_path, capsys, caplog, empty_mlflow_db
):
    """It ended in about 10 chained tracebacks, with no hint that the run could resume. The
    server is `make server`, as users start it (which starts no job runner and records its
    address: checked here, once it is up); the resume runs the printed command's job
    in-process, as scripts/train.py runs it (the script itself resumes from a last.pt in
    tests/test_reproducibility.py)."""
    port, store = free_port(), tmp_path / "server"
    url = f"http://127.0.0.1:{port}"
    store.mkdir()
    shutil.copy(empty_mlflow_db, store / "mlflow.db")
    server = start_make_server("server", store, port)
    try:
        assert_no_job_runner_and_address_recorded(url, store, server.pid)
        overrides = [*tiny_overrides(synthetic_root, tmp_path), f"logger.tracking_uri={url}"]
        cfg = compose_config([*overrides, "trainer.epochs=3"])

        def kill_server_after_epoch_1(metrics: dict[str, float], epoch: int) -> None:
            if epoch == 1:
                stop_server(server, signal.SIGKILL)

        ctx = JobContext(output_dir=tmp_path / "run", epoch_observer=kill_server_after_epoch_1)
        logged = caplog.at_level(logging.WARNING)
        with logged, pytest.raises(SystemExit) as exited, exit_on_user_error(cfg):
            run_training(cfg, ctx)  # as scripts/train.py runs it
        assert exited.value.code == 1  # not a refusal (2)
        (line,) = capsys.readouterr().err.splitlines()
        command = f"python scripts/train.py trainer.resume={ctx.output_dir}/checkpoints/last.pt"
        assert line.startswith(f"error: the MLflow store {url} failed during the run "
                               "(Connection refused)"), line  # fmt: skip
        assert line.endswith(f"; once that is fixed, resume the run: {command}"), line
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

        server = start_make_server("server", store, port)  # the same store and address
        python, script, *overrides = command.split()
        assert (python, script) == ("python", "scripts/train.py")
        run_training(compose_config(overrides), JobContext(output_dir=tmp_path / "resumed"))
        client = MlflowClient(url)
        (run,) = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, VAL_ACC)] == [1, 2, 3]
        assert_logged_once_per_step(client, run.info.run_id)
    finally:
        stop_server(server)
