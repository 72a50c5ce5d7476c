"""No secret reaches a config, a file or a message: a password in a URI on the command
line moves to the environment variable its client reads before Hydra records anything,
and messages and log lines are redacted."""

import logging
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from mnist.cli import exit_on_user_error
from mnist.errors import ConfigError, TrackingError
from mnist.redact import overrides_without_credentials, redact, redact_log_records
from tests.helpers import REPO_ROOT, run_script, tiny_overrides
from tests.helpers.server import mlflow_server

SECRET = "s3cretpw"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:pw@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db"),
        ("postgresql://u:sec/ret@h/db and more", "postgresql://u:***@h/db and more"),
        ("mysql+pymysql://me:p@ss:w@db.example/x", "mysql+pymysql://me:***@db.example/x"),
        ("at http://u:pw@host:5000 and https://:tok@h/x", "at http://u:***@host:5000 and https://:***@h/x"),
        ("postgresql://db/x?user=u&password=pw&port=1", "postgresql://db/x?user=u&password=***&port=1"),
        ("https://host/api?token=abc;x=1", "https://host/api?token=***;x=1"),
    ],
)  # fmt: skip
def test_a_password_in_a_uri_is_replaced(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:////tmp/mlruns/mlflow.db",
        "http://127.0.0.1:5000/#/experiments/1",
        "model=cnn4 optimizer.lr=0.01 seed=0",
        "user@example.com: a:b@c",
    ],
)
def test_text_without_a_secret_is_unchanged(text):
    assert redact(text) == text


def test_log_lines_of_any_logger_are_redacted(caplog):
    redact_log_records()
    with caplog.at_level(logging.INFO):
        logging.getLogger("mlflow.some.module").info("store %s", f"postgresql://u:{SECRET}@h/db")
    assert caplog.messages == ["store postgresql://u:***@h/db"]
    assert SECRET not in caplog.text


def test_a_refusal_that_names_a_uri_prints_it_redacted(capsys):
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        raise TrackingError(f"MLflow store postgresql://u:{SECRET}@h/db is unreachable")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: MLflow store postgresql://u:***@h/db is unreachable\n"


@pytest.fixture
def moved(monkeypatch):
    """The environment variables credentials move to, restored after the test."""
    import mnist.redact

    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(mnist.redact, "_moved", {})
    return os.environ


def test_a_servers_credentials_move_to_mlflows_variables(moved):
    argv = [f"logger.tracking_uri=http://me:{SECRET}@127.0.0.1:5000/x", "seed=1", "-m"]
    assert overrides_without_credentials(argv) == [
        "logger.tracking_uri=http://127.0.0.1:5000/x",
        "seed=1",
        "-m",
    ]
    assert (moved["MLFLOW_TRACKING_USERNAME"], moved["MLFLOW_TRACKING_PASSWORD"]) == ("me", SECRET)


def test_a_postgres_password_with_a_slash_moves_to_libpqs_variable(moved):
    argv = [f"storage=postgresql+psycopg2://u:{SECRET}/x@db:5432/optuna?sslmode=require"]
    assert overrides_without_credentials(argv) == [
        "storage=postgresql+psycopg2://u@db:5432/optuna?sslmode=require"
    ]
    assert moved["PGPASSWORD"] == f"{SECRET}/x"


@pytest.mark.parametrize(
    "override",
    [
        f"storage=mysql+pymysql://u:{SECRET}@db/optuna",
        f"storage=sqlite:////tmp/optuna.db?password={SECRET}",
        f"logger.tracking_uri=https://host/api?token={SECRET}",
    ],
)
def test_a_credential_no_client_reads_from_the_environment_is_refused(moved, override):
    with pytest.raises(ConfigError) as refused:
        overrides_without_credentials([override])
    assert override.partition("=")[0] in str(refused.value)
    assert SECRET not in str(refused.value)


def test_two_different_passwords_for_one_client_are_refused(moved):
    with pytest.raises(ConfigError, match="PGPASSWORD"):
        overrides_without_credentials(
            ["logger.tracking_uri=postgresql://u:a@h/m", "storage=postgresql://u:b@h/o"]
        )


def test_the_composed_config_never_holds_the_password():
    shown = run_script("train", f"logger.tracking_uri=http://u:{SECRET}@h:1", "--cfg", "job")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "tracking_uri: http://h:1" in shown.stdout
    assert SECRET not in shown.stdout + shown.stderr


@pytest.mark.slow
def test_a_password_in_the_study_storage_is_not_printed_nor_recorded(tmp_path):
    storage = f"storage=postgresql://u:{SECRET}/x@127.0.0.1:1/db"
    places = [f"paths.outputs={tmp_path}", f"paths.mlruns={tmp_path / 'mlruns'}"]
    tuned = run_script("tune", storage, *places, f"hydra.run.dir={tmp_path / 'run'}")
    assert tuned.returncode == 2, tuned.stderr[-3000:]
    assert "postgresql://u@127.0.0.1:1/db" in tuned.stderr
    assert SECRET not in tuned.stdout + tuned.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SECRET in p.read_text()]


# Slow: an MLflow server and a training run, each in its own interpreter.
@pytest.mark.slow
def test_a_run_on_a_server_with_credentials_records_no_password(
    synthetic_root, tmp_path, empty_mlflow_db
):
    """A server without MLflow's auth app (which spends ~0.3 s of CPU on each request
    checking the password): whether credentials reach a server is tests/test_store.py's."""
    with mlflow_server(tmp_path, made=empty_mlflow_db) as url:
        secret_url = url.replace("http://", f"http://user:{SECRET}@")
        trained = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "train.py"),
             *tiny_overrides(synthetic_root, tmp_path), "trainer.epochs=1",
             f"logger.tracking_uri={secret_url}"],
            capture_output=True, text=True, timeout=600, env=dict(os.environ),
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert SECRET not in trained.stdout + trained.stderr

        client = MlflowClient(url)
        (run,) = client.search_runs(client.search_experiments()[0].experiment_id)
        recorded = {**run.data.params, **run.data.tags}
        assert not [key for key, value in recorded.items() if SECRET in value]
        assert f"logger.tracking_uri={url}" in run.data.tags["hydra.overrides"]
        downloaded = tmp_path / "artifacts"
        client.download_artifacts(run.info.run_id, "", str(downloaded))
        uploaded = [p for p in downloaded.rglob("*") if p.is_file()]
        assert {"overrides.yaml", "config.yaml", "best.pt"} <= {p.name for p in uploaded}
        written = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
        assert {"last.pt", "train.log", "hydra.yaml"} <= {p.name for p in written}
        # Checkpoints are zip files of pickles: the config inside is stored uncompressed.
        assert not [p for p in uploaded + written if SECRET.encode() in p.read_bytes()]
