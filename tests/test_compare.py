"""compare on runs written by hand into a real MLflow store, with numbers known in advance:
seeds aggregate into one row, failed runs are counted and listed, bad input is one error."""

import shutil
import statistics

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mnist.errors import ConfigError
from mnist.reporting.compare import compare
from tests.helpers.compare import compare_config, read_csv

# Params as the trainer logs them: str() of the resolved config values.
CNN3_PARAMS = {
    "model._target_": "mnist.models.ConvNet",
    "model.stages": "[[32], [64], [128]]",
    "model.downsample": "pool",
    "model.hidden": "128",
    "model.dropout": "0.3",
}
LINEAR_PARAMS = {
    "model._target_": "mnist.models.DenseNet",
    "model.hidden": "10",
    "model.relu": "False",
}


@pytest.fixture
def store(tmp_path, empty_mlflow_db) -> MlflowClient:
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def log_run(client, experiment_id, model, seed, params, status="FINISHED", **histories) -> str:
    """A run as the trainer logs one: per-epoch histories (steps 1..n), final metrics."""
    run = client.create_run(
        experiment_id,
        run_name=f"model={model},seed={seed}",
        tags={"model": model, "seed": str(seed), "hydra.overrides": f"model={model} optimizer=sgd"},
    )
    metrics = [
        Metric(name.replace("__", "/"), value, 0, step)
        for name, values in histories.items()
        for step, value in enumerate(values if isinstance(values, list) else [values], 1)
    ]
    params = [Param(k, v) for k, v in params.items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_seeds_become_one_row_and_failed_runs_are_counted(store, tmp_path):
    exp = store.create_experiment("table")
    per_epoch = {"epoch_time_s": [2.0, 4.0], "throughput_img_s": [100.0, 300.0]}
    log_run(store, exp, "cnn3", 0, CNN3_PARAMS, test__acc_epoch=[0.98, 0.99], test__acc=0.989,
            train_time_s=6.0, params_count=1234.0, **per_epoch)  # fmt: skip
    log_run(store, exp, "cnn3", 1, CNN3_PARAMS, test__acc_epoch=[0.993, 0.991], test__acc=0.992,
            train_time_s=8.0, params_count=1234.0, **per_epoch)  # fmt: skip
    failed = log_run(store, exp, "cnn3", 2, CNN3_PARAMS, status="FAILED", params_count=1234.0)
    log_run(store, exp, "linear", 0, LINEAR_PARAMS, test__acc=0.9, train_time_s=1.0,
            epoch_time_s=[1.0], throughput_img_s=[50.0])  # fmt: skip
    store.create_run(exp, run_name="sweep parent")  # no model tag: not a training run
    log_run(store, exp, "foreign", 0, {"model._target_": "os.system", "model.command": "false"},
            test__acc=0.5, train_time_s=1.0)  # fmt: skip

    paths = compare(compare_config(tmp_path), tmp_path / "out")

    cnn3, linear, foreign = read_csv(tmp_path / "out" / "table.csv")
    assert (cnn3["model"], cnn3["runs"], cnn3["failed"]) == ("cnn3", "2", "1")
    assert float(cnn3["final_acc_mean"]) == pytest.approx(100 * (0.99 + 0.991) / 2)
    assert float(cnn3["final_acc_std"]) == pytest.approx(100 * statistics.stdev([0.99, 0.991]))
    assert float(cnn3["max_acc"]) == pytest.approx(99.3)
    assert float(cnn3["best_val_ckpt_acc_mean"]) == pytest.approx(100 * (0.989 + 0.992) / 2)
    assert float(cnn3["epoch_time_s"]) == pytest.approx(3.0)
    assert float(cnn3["train_time_s"]) == pytest.approx(7.0)
    assert float(cnn3["img_per_s"]) == pytest.approx(200.0)
    assert (cnn3["params"], cnn3["conv_layers"], cnn3["pooling"]) == ("1234", "3", "MaxPool")
    assert (cnn3["ref_final_acc"], cnn3["ref_max_acc"]) == ("99.48", "99.69")
    # No per-epoch test accuracy logged: no final or max, but the checkpoint's accuracy.
    assert (linear["final_acc_mean"], linear["max_acc"]) == ("", "")
    assert float(linear["best_val_ckpt_acc_mean"]) == pytest.approx(90.0)
    assert (linear["conv_layers"], linear["pooling"]) == ("0", "none")
    # A foreign _target_ in the store is described as unknown, never instantiated.
    assert (foreign["conv_layers"], foreign["pooling"]) == ("", "n/a")

    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| cnn3 | 1,234 | 3 | MaxPool | 2 | 2 + 1 failed | 99.05 ± 0.07 | 99.30 |" in markdown
    assert f"| cnn3 | model=cnn3,seed=2 | FAILED | {failed} |" in markdown
    assert (tmp_path / "out" / "chart.png").stat().st_size > 10_000
    summary = store.search_runs([exp], "attributes.run_name = 'compare'")
    assert len(summary) == 1 and summary[0].info.status == "FINISHED"
    assert summary[0].data.tags["compare.runs"] == "5"
    logged = {a.path for a in store.list_artifacts(summary[0].info.run_id)}
    assert logged == {p.name for p in paths} == {"table.md", "table.csv", "chart.png"}


def test_group_by_splits_rows_by_a_swept_key(store, tmp_path):
    exp = store.create_experiment("table")
    for seed in (0, 1):
        log_run(store, exp, "linear", seed, LINEAR_PARAMS, test__acc=0.9, train_time_s=1.0)
    config = compare_config(tmp_path, "group_by=[seed,optimizer]", "log_summary=false")
    compare(config, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "table.csv")
    assert [(r["seed"], r["optimizer"], r["runs"]) for r in rows] == [
        ("0", "sgd", "1"),
        ("1", "sgd", "1"),
    ]
    filtered = compare_config(tmp_path, "filter='tags.seed = \"1\"'", "log_summary=false")
    compare(filtered, tmp_path / "filtered")
    assert [r["runs"] for r in read_csv(tmp_path / "filtered" / "table.csv")] == ["1"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["logger.experiment=nope"], "'nope' names no MLflow experiment .*known: Default, table"),
        (["parent_run_id=0123"], "no training runs in experiment 'table' matching"),
        (["group_by=[nope]"], "group_by key 'nope' is no tag, param or override"),
        (["filter='tags.seed ~ 1'"], "is not an MLflow filter"),
    ],
)
def test_bad_input_is_one_clear_error(store, tmp_path, overrides, message):
    exp = store.create_experiment("table")
    log_run(store, exp, "linear", 0, LINEAR_PARAMS, test__acc=0.9, train_time_s=1.0)
    with pytest.raises(ConfigError, match=message):
        compare(compare_config(tmp_path, *overrides), tmp_path / "out")
    assert not (tmp_path / "out").exists()
