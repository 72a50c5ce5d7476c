"""No secret is printed or logged: a password in a URI is redacted in messages, log lines,
MLflow params, tags and text artifacts, and the job's log file."""

import logging
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from mnist.cli import exit_on_user_error
from mnist.errors import TrackingError
from mnist.redact import redact, redact_log_records
from tests.helpers import REPO_ROOT, run_script, tiny_overrides
from tests.helpers.server import mlflow_server

SECRET = "s3cretpw"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:pw@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db"),
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


@pytest.mark.slow
def test_a_password_in_the_study_storage_is_not_printed(tmp_path):
    storage = f"storage=postgresql://u:{SECRET}@127.0.0.1:1/db"
    places = [f"paths.outputs={tmp_path}", f"paths.mlruns={tmp_path / 'mlruns'}"]
    tuned = run_script("tune", storage, *places)
    assert tuned.returncode == 2, tuned.stderr[-3000:]
    assert "postgresql://u:***@127.0.0.1:1/db" in tuned.stderr
    assert SECRET not in tuned.stdout + tuned.stderr


# Slow: an MLflow server and a training run, each in its own interpreter.
@pytest.mark.slow
def test_a_run_on_a_server_with_credentials_records_no_password(synthetic_root, tmp_path):
    with mlflow_server(tmp_path) as url:
        secret_url = url.replace("http://", f"http://user:{SECRET}@")
        trained = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "train.py"),
             *tiny_overrides(synthetic_root, tmp_path), "trainer.epochs=1",
             f"logger.tracking_uri={secret_url}"],
            capture_output=True, text=True, timeout=600, env=dict(os.environ),
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert SECRET not in trained.stdout + trained.stderr
        (job_log,) = (tmp_path / "outputs").rglob("train.log")
        assert SECRET not in job_log.read_text()

        client = MlflowClient(url)
        (run,) = client.search_runs(client.search_experiments()[0].experiment_id)
        recorded = {**run.data.params, **run.data.tags}
        assert not [key for key, value in recorded.items() if SECRET in value]
        assert "user:***@" in run.data.tags["hydra.overrides"]
        downloaded = tmp_path / "artifacts"
        client.download_artifacts(run.info.run_id, "", str(downloaded))
        texts = [p for p in downloaded.rglob("*") if p.suffix in (".yaml", ".log", ".txt")]
        assert any(p.name == "overrides.yaml" for p in texts)
        assert not [p for p in texts if SECRET in p.read_text()]
