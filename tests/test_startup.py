import shutil

import pytest
from mlflow.tracking import MlflowClient

from mnist.errors import ConfigError
from mnist.tools.startup import startup
from mnist.training.phases import PHASES
from tests.helpers import compose_config, tiny_overrides


def startup_config(synthetic_root, tmp_path, empty_mlflow_db, *command):
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    cfg = compose_config(
        [f"paths.outputs={tmp_path / 'outputs'}", f"paths.mlruns={tmp_path / 'mlruns'}"],
        config_name="startup",
    )
    cfg.startup.command = [*tiny_overrides(synthetic_root, tmp_path), *command]
    return cfg


@pytest.mark.slow
def test_startup_splits_a_runs_wall_time_into_the_phases_it_logged(
    synthetic_root, tmp_path, empty_mlflow_db
):
    cfg = startup_config(
        synthetic_root, tmp_path, empty_mlflow_db, "trainer.epochs=1", "logger.log_model=true"
    )
    numbers = startup(cfg, tmp_path / "out")
    assert set(PHASES) <= numbers.keys()
    assert all(numbers[phase] > 0 for phase in PHASES)
    assert sum(numbers[phase] for phase in PHASES) <= numbers["wall"]
    assert numbers["other"] == pytest.approx(
        numbers["wall"] - sum(numbers[phase] for phase in PHASES)
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("startup").experiment_id
    (table_run,) = client.search_runs([experiment], "tags.`mlflow.runName` = 'startup'")
    training = client.get_run(table_run.data.tags["training_run"])
    assert training.info.status == "FINISHED"
    assert table_run.data.metrics["startup/wall_s"] == pytest.approx(numbers["wall"])
    assert {a.path for a in client.list_artifacts(table_run.info.run_id)} == {"startup.md"}
    assert "| imports |" in (tmp_path / "out" / "startup.md").read_text()


def test_startup_refuses_a_command_that_names_its_own_store(
    synthetic_root, tmp_path, empty_mlflow_db
):
    cfg = startup_config(synthetic_root, tmp_path, empty_mlflow_db, "logger.experiment=x")
    with pytest.raises(ConfigError, match=r"startup.command sets logger.experiment=x"):
        startup(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
