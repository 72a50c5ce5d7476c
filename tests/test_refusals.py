"""Refusals of whole scripts (issue 18): one line, exit 2, and nothing on disk, also where
the refusal comes after Hydra made the job's directory. Slow: each runs a script, but
training's, which runs its job in-process."""

import shutil

import pytest
from mlflow.tracking import MlflowClient

from mnist.cli import exit_on_user_error
from mnist.context import JobContext
from mnist.job import run_training
from mnist.tracking.store import get_or_create_experiment
from tests.helpers import compose_config, run_script
from tests.helpers.server import web_server_that_is_not_mlflow


def assert_refused_leaving_nothing(result, message: str, outputs) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    # Hydra made <outputs>/.../<date>/<time>/ before the job ran: none of it is left.
    assert not outputs.exists() or not [*outputs.iterdir()]


@pytest.mark.slow
def test_reproduce_refuses_a_config_yaml_with_a_python_tag(tmp_path, empty_mlflow_db):
    """Before: PyYAML's ConstructorError traceback, exit 1, outputs/reproduce/<ts>/ left."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    (tmp_path / "config.yaml").write_text('!!python/object/apply:os.system ["true"]\n')
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    # Its artifacts beside the store: MLflow's default is the checkout's ./mlruns.
    run_id = client.create_run(get_or_create_experiment(uri, "shared")).info.run_id
    client.log_artifact(run_id, str(tmp_path / "config.yaml"))
    result = run_script(
        "reproduce", f"run_id={run_id}", f"paths.mlruns={tmp_path / 'mlruns'}",
        f"paths.outputs={tmp_path / 'outputs'}",
    )  # fmt: skip
    assert_refused_leaving_nothing(result, "not a readable YAML config", tmp_path / "outputs")


def test_training_refuses_a_tracking_server_that_is_not_mlflow(tmp_path, capsys):
    """Before: a 79-line traceback of MLflow's client, after the run's files were written.
    In-process, as scripts/train.py runs the job: a TrackingError leaves the script as a
    ConfigError does (mnist/cli.py exit_on_user_error), Hydra's directory discarded
    (test_config.py test_script_refuses_late_failures_before_any_side_effect)."""
    outputs = tmp_path / "outputs"
    with web_server_that_is_not_mlflow(tmp_path) as url:
        cfg = compose_config([f"logger.tracking_uri={url}", f"paths.outputs={outputs}",
                              f"data.root={tmp_path / 'data'}"])  # fmt: skip
        with pytest.raises(SystemExit) as exited, exit_on_user_error(cfg):
            run_training(cfg, JobContext(output_dir=outputs / "job"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2
    assert (
        len(lines) == 1 and lines[0].startswith("error: ") and "is not a working MLflow" in lines[0]
    )
    assert not outputs.exists()
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_refused_search_leaves_no_directory(tmp_path):
    """Before: outputs/tune/<study>/<date>/ stayed, as tune.py did not say where outputs are."""
    pytest.importorskip("optuna")
    result = run_script(
        "tune", f"logger.tracking_uri=file://{tmp_path / 'file-store'}",
        f"paths.outputs={tmp_path / 'outputs'}", f"paths.mlruns={tmp_path / 'mlruns'}",
    )  # fmt: skip
    assert_refused_leaving_nothing(result, "is not supported", tmp_path / "outputs")
