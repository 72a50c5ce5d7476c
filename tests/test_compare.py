"""compare on runs written by hand into a real MLflow store, with numbers known in advance:
seeds aggregate into one row, other configs into rows of their own, the best by validation
first; failed runs are counted and listed, bad input is one error."""

import shutil
import statistics

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mnist.errors import ConfigError
from mnist.reporting.compare import compare
from mnist.reporting.table import Row, markdown
from mnist.sweeps.callback import summarize_sweep
from mnist.tracking.registry import latest_sweep
from tests.helpers.compare import compare_config, read_csv

# The shape of each model, as training runs record it (mnist.models.describe.shape_tags).
CNN3 = {"model.conv_layers": "3", "model.pooling": "MaxPool"}
LINEAR = {"model.conv_layers": "0", "model.pooling": "none"}


@pytest.fixture
def store(tmp_path, empty_mlflow_db) -> MlflowClient:
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def log_run(client, experiment_id, model, seed, shape, status="FINISHED", parent=None,
            config=None, **histories) -> str:  # fmt: skip
    """A run as the trainer logs one: its tags, params, per-epoch histories (steps 1..n)
    and final metrics; `config`: more keys set on its command line (overrides and params)."""
    config = {"optimizer": "sgd", **(config or {})}
    overrides = " ".join(f"{key}={value}" for key, value in {"model": model, **config}.items())
    tags = {"model": model, "seed": str(seed), "hydra.overrides": overrides, **shape}
    run = client.create_run(
        experiment_id,
        run_name=f"{model} seed={seed}",
        tags={**tags, **({"mlflow.parentRunId": parent} if parent else {})},
    )
    metrics = [
        Metric(name.replace("__", "/"), value, 0, step)
        for name, values in histories.items()
        for step, value in enumerate(values if isinstance(values, list) else [values], 1)
    ]
    # All 55,000 training images unless `config` says otherwise (mnist/tracking/params.py).
    values = {"model": model, "seed": seed, "data.val_size": 5000, "data.train_subset": None}
    params = [Param(key, str(value)) for key, value in {**values, **config}.items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_seeds_become_one_row_and_failed_runs_are_counted(store, tmp_path):
    exp = store.create_experiment("table")
    per_epoch = {"epoch_time_s": [2.0, 4.0], "throughput_img_s": [100.0, 300.0]}
    log_run(store, exp, "cnn3", 0, CNN3, test__acc_epoch=[0.98, 0.99], test__acc=0.989,
            train_time_s=6.0, params_count=1234.0, **per_epoch)  # fmt: skip
    log_run(store, exp, "cnn3", 1, CNN3, test__acc_epoch=[0.993, 0.991], test__acc=0.992,
            train_time_s=8.0, params_count=1234.0, **per_epoch)  # fmt: skip
    failed = log_run(store, exp, "cnn3", 2, CNN3, status="FAILED", params_count=1234.0)
    log_run(store, exp, "linear", 0, LINEAR, test__acc=0.9, train_time_s=1.0,
            epoch_time_s=[1.0] * 3, throughput_img_s=[50.0] * 3)  # fmt: skip
    store.create_run(exp, run_name="sweep parent")  # no model tag: not a training run
    log_run(store, exp, "older", 0, {}, test__acc=0.5, train_time_s=1.0)  # no shape recorded

    paths = compare(compare_config(tmp_path, "parent_run_id=all"), tmp_path / "out")

    cnn3, linear, older = read_csv(tmp_path / "out" / "table.csv")
    assert (cnn3["model"], cnn3["runs"], cnn3["failed"]) == ("cnn3", "2", "1")
    assert float(cnn3["final_acc_mean"]) == pytest.approx(100 * (0.99 + 0.991) / 2)
    assert float(cnn3["final_acc_std"]) == pytest.approx(100 * statistics.stdev([0.99, 0.991]))
    # 6 significant digits: MLflow shows the file as a table, which read 99.04999999999999.
    assert (cnn3["final_acc_mean"], cnn3["final_acc_std"]) == ("99.05", "0.0707107")
    assert float(cnn3["max_acc"]) == pytest.approx(99.3)
    assert float(cnn3["best_val_ckpt_acc_mean"]) == pytest.approx(100 * (0.989 + 0.992) / 2)
    assert float(cnn3["epoch_time_s"]) == pytest.approx(3.0)
    assert float(cnn3["train_time_s"]) == pytest.approx(7.0)
    assert float(cnn3["img_per_s"]) == pytest.approx(200.0)
    assert (cnn3["params"], cnn3["conv_layers"], cnn3["pooling"]) == ("1234", "3", "MaxPool")
    assert (cnn3["ref_final_acc"], cnn3["ref_max_acc"]) == ("99.48", "99.69")
    assert cnn3["vs_ref"] == ""  # 2 epochs: no match for the reference's 30
    # Against the reference's final accuracy, after as many epochs (3) on 55,000 images.
    assert float(linear["vs_ref"]) == pytest.approx(90.0 - 91.94)
    assert older["vs_ref"] == ""  # no reference
    # No per-epoch test accuracy logged: no final or max, but the checkpoint's accuracy.
    assert (linear["final_acc_mean"], linear["max_acc"]) == ("", "")
    assert float(linear["best_val_ckpt_acc_mean"]) == pytest.approx(90.0)
    assert (linear["conv_layers"], linear["pooling"]) == ("0", "none")
    assert (older["conv_layers"], older["pooling"]) == ("", "n/a")

    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| cnn3 | 1,234 | 3 | MaxPool | 2 | 2 + 1 failed | 99.05 ± 0.07 | 99.30 |" in markdown
    assert f"| cnn3 | cnn3 seed=2 | FAILED | {failed} |" in markdown
    assert "| 99.48 (30 ep) | 99.69 (30 ep) | n/c |" in markdown
    assert (
        "- **n/c** cnn3: 55,000 training images, 2 epochs; the reference 55,000 images, 30"
        in markdown
    )
    assert (tmp_path / "out" / "chart.png").stat().st_size > 10_000
    summaries = store.get_experiment_by_name("table/compare").experiment_id
    summary = store.search_runs([summaries], "attributes.run_name = 'compare'")
    assert len(summary) == 1 and summary[0].info.status == "FINISHED"
    assert summary[0].data.tags["compare.runs"] == "5"
    assert summary[0].data.tags["compare.parent_run_id"] == "all"
    logged = {a.path for a in store.list_artifacts(summary[0].info.run_id)}
    assert logged == {p.name for p in paths} == {"table.md", "table.csv", "chart.png"}


def test_group_by_splits_rows_by_a_swept_key(store, tmp_path):
    exp = store.create_experiment("table")
    for seed in (0, 1):
        log_run(store, exp, "linear", seed, LINEAR, test__acc=0.9, train_time_s=1.0)
    config = compare_config(tmp_path, "group_by=[seed,optimizer]", "log_summary=false",
                            "parent_run_id=all")  # fmt: skip
    compare(config, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "table.csv")
    assert [(r["seed"], r["optimizer"], r["runs"]) for r in rows] == [
        ("0", "sgd", "1"),
        ("1", "sgd", "1"),
    ]
    filtered = compare_config(tmp_path, "filter='tags.seed = \"1\"'", "log_summary=false",
                              "parent_run_id=all")  # fmt: skip
    compare(filtered, tmp_path / "filtered")
    assert [r["runs"] for r in read_csv(tmp_path / "filtered" / "table.csv")] == ["1"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["logger.experiment=nope"], "'nope' names no MLflow experiment .*known: Default, table"),
        (["parent_run_id=0123"], "no training runs in experiment 'table' matching"),
        ([], "no sweep in MLflow experiment 'table' .*, or parent_run_id=all for all its runs"),
        (["parent_run_id=all", "group_by=[nope]"], "group_by key 'nope' is no tag, param or"),
        (["parent_run_id=all", "filter='tags.seed ~ 1'"], "is not an MLflow filter"),
    ],
)
def test_bad_input_is_one_clear_error(store, tmp_path, overrides, message):
    exp = store.create_experiment("table")
    log_run(store, exp, "linear", 0, LINEAR, test__acc=0.9, train_time_s=1.0)
    with pytest.raises(ConfigError, match=message):
        compare(compare_config(tmp_path, *overrides), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_columns_that_need_test_every_epoch_are_left_out_and_said_so(store, tmp_path):
    exp = store.create_experiment("table")
    log_run(store, exp, "linear", 0, LINEAR, test__acc=0.9, train_time_s=1.0)
    compare(compare_config(tmp_path, "log_summary=false", "parent_run_id=all"), tmp_path / "out")
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "final test acc %" not in markdown and "max test acc %" not in markdown
    assert "test accuracy per epoch (`trainer.test_every_epoch=true`)" in markdown
    assert "| linear | 7,960 |" not in markdown  # params_count was not logged: n/a
    assert "| linear | n/a | 0 | none |" in markdown


def test_a_sweep_parent_becomes_its_summary_and_compare_logs_under_it(store, tmp_path):
    # Its artifacts beside the test's store (MLflow's default: ./mlruns/<id> of the checkout).
    exp = store.create_experiment("table", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = store.create_run(exp, run_name="sweep").info.run_id
    store.log_batch(parent, params=[Param("model", "cnn3,linear"), Param("seed", "0,1")])
    for seed, acc, val in ((0, 0.98, 0.97), (1, 0.99, 0.985)):
        log_run(store, exp, "cnn3", seed, CNN3, parent=parent, test__acc=acc,
                best__val_acc=val, train_time_s=10.0 + seed)  # fmt: skip
    log_run(store, exp, "linear", 0, LINEAR, parent=parent, test__acc=0.9, best__val_acc=0.91,
            train_time_s=1.0)  # fmt: skip
    log_run(store, exp, "linear", 9, LINEAR, test__acc=0.1)  # another sweep's: not summarised

    summarize_sweep(store.tracking_uri, "table", parent, tmp_path / "summary")

    run = store.get_run(parent)
    metrics = run.data.metrics
    # One section of MLflow's charts (the part before the first "/"): summary.
    assert {name.split("/")[0] for name in metrics} == {"summary"}
    assert metrics["summary/cnn3/test/acc_mean"] == pytest.approx(0.985)
    assert metrics["summary/cnn3/test/acc_std"] == pytest.approx(statistics.stdev([0.98, 0.99]))
    assert metrics["summary/cnn3/best/val_acc_mean"] == pytest.approx(0.9775)
    assert metrics["summary/cnn3/train_time_s_mean"] == pytest.approx(10.5)
    assert metrics["summary/linear/test/acc_mean"] == pytest.approx(0.9)
    assert "summary/linear/test/acc_std" not in metrics  # one run has no spread
    assert {a.path for a in store.list_artifacts(parent)} == {"table.md", "table.csv", "chart.png"}
    # Its description opens with the winner, links the sweep's own runs, then the table's
    # key columns (those that fit the half page MLflow gives it), under the sweep's name.
    description = run.data.tags["mlflow.note.content"]
    assert description.startswith("**Winner: cnn3** by validation accuracy, 97.75 ± 1.06%")
    assert f"viewStateShareKey=runs-of-{parent}" in description
    assert "## table: sweep\n" in description and "tags.`mlflow" not in description
    assert "| cnn3 ★ | 2 | 97.75 ± 1.06 | 98.50 ± 0.71 | 10.5 |" in description

    compare(compare_config(tmp_path, f"parent_run_id={parent}"), tmp_path / "out")
    summaries = store.get_experiment_by_name("table/compare").experiment_id
    (summary,) = store.search_runs([summaries], "attributes.run_name = 'compare'")
    assert summary.data.tags["compare.parent_run_id"] == parent
    assert summary.data.tags["compare.runs"] == "3"
    # Its page says what it found and links the sweep it compares.
    description = summary.data.tags["mlflow.note.content"]
    assert description.startswith("**Winner: cnn3**")
    assert (
        f"[sweep](#/experiments/{exp}/runs/{parent}?workflowType=machine_learning)" in description
    )
    assert "| cnn3 ★ | 2 | 97.75 ± 1.06 | 98.50 ± 0.71 | 10.5 |" in description
    assert summary.data.metrics["summary/cnn3/test/acc_mean"] == pytest.approx(0.985)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        # The final accuracy when there is one, else the best epoch's, else a stated goal.
        ({"final": 99.41, "max": 99.48}, "-0.11"),
        ({"max": 99.26, "epochs": 10}, "+0.04"),
        ({"goal": 99.4}, "-0.10"),
        (None, "-"),
        # Only after as many epochs, where the reference states them, on as many images.
        ({"max": 99.26, "epochs": 30}, "n/c"),
        ({"final": 99.41, "train_images": 60000}, "n/c"),
    ],
)
def test_vs_ref_measures_a_row_against_the_reference_it_has(reference, expected):
    reference = reference and {"train_images": 55000, "source": "s", **reference}
    row = Row(model="m", groups={}, finished=2, checkpoint_acc=[0.9929, 0.9931],
              epochs=[10, 10], train_images=[55000, 55000], reference=reference)  # fmt: skip
    line = next(line for line in markdown([row], "t").splitlines() if line.startswith("| m |"))
    assert line.endswith(f"| {expected} |")


@pytest.mark.parametrize("epochs, said", [([1], "1 epoch;"), ([1, 2], "1-2 epochs;")])
def test_a_row_not_comparable_says_its_epochs_in_words(epochs, said):
    reference = {"final": 99.41, "epochs": 30, "train_images": 55000, "source": "s"}
    row = Row(model="m", groups={}, finished=2, checkpoint_acc=[0.99, 0.99], epochs=epochs,
              train_images=[5000], reference=reference)  # fmt: skip
    assert f"5,000 training images, {said} the reference 55,000" in markdown([row], "t")


def sweep(client, experiment_id, start_time) -> str:
    """A sweep's parent run as mnist/sweeps/callback.py opens it, started at `start_time`."""
    tags = {"sweep.dir": f"outputs/multirun/{start_time}"}
    return client.create_run(experiment_id, start_time=start_time, tags=tags).info.run_id


def test_without_arguments_the_latest_sweep_is_compared_as_promote_picks_it(store, tmp_path):
    exp = store.create_experiment("table")
    older, latest = sweep(store, exp, 1000), sweep(store, exp, 2000)
    for seed in (0, 1):
        log_run(store, exp, "linear", seed, LINEAR, parent=older, test__acc=0.5)
    log_run(store, exp, "linear", 0, LINEAR, test__acc=0.6)  # a single run, of no sweep
    log_run(store, exp, "linear", 0, LINEAR, parent=latest, test__acc=0.9)

    compare(compare_config(tmp_path, "log_summary=false"), tmp_path / "out")

    assert latest_sweep(store.tracking_uri, "table") == latest  # promote.py's choice
    (row,) = read_csv(tmp_path / "out" / "table.csv")
    assert (row["runs"], float(row["best_val_ckpt_acc_mean"])) == ("1", pytest.approx(90.0))
    compare(compare_config(tmp_path, "parent_run_id=all", "log_summary=false"), tmp_path / "all")
    assert [r["runs"] for r in read_csv(tmp_path / "all" / "table.csv")] == ["4"]


def test_runs_of_different_configs_are_rows_of_their_own(store, tmp_path):
    exp = store.create_experiment("table")
    parent = sweep(store, exp, 1000)
    configs = [{"trainer.epochs": 1}, {"trainer.epochs": 3, "augmentation": "none"},
               {"trainer.epochs": 3, "augmentation": "affine"}]  # fmt: skip
    for config in configs:
        for seed in (0, 1):
            log_run(store, exp, "lenet5", seed, CNN3, parent=parent, config=config,
                    test__acc=0.9 + 0.01 * seed)  # fmt: skip

    compare(compare_config(tmp_path, "log_summary=false"), tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "table.csv")
    assert [(r["trainer.epochs"], r["augmentation"], r["runs"], r["mixed"]) for r in rows] == [
        ("1", "n/a", "2", ""),
        ("3", "none", "2", ""),
        ("3", "affine", "2", ""),
    ]

    compare(compare_config(tmp_path, "log_summary=false", "group_by=[]"), tmp_path / "pooled")
    markdown = (tmp_path / "pooled" / "table.md").read_text()
    assert "| 6 (mixed) |" in markdown
    assert "- **mixed** lenet5: pools runs that differ in trainer.epochs, augmentation" in markdown


def test_rows_are_ranked_by_validation_and_its_winner_marked(store, tmp_path):
    exp = store.create_experiment("table")
    parent = sweep(store, exp, 1000)
    # The best test accuracy is not the best validation accuracy: the order is validation's.
    for model, val, test in (("linear", 0.90, 0.99), ("cnn3", 0.98, 0.97), ("fast", 0.95, 0.98)):
        for seed in (0, 1):
            log_run(store, exp, model, seed, CNN3, parent=parent, best__val_acc=val + seed / 100,
                    test__acc=test)  # fmt: skip

    compare(compare_config(tmp_path, "log_summary=false"), tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "table.csv")
    assert [(r["model"], round(float(r["best_val_acc_mean"]), 2)) for r in rows] == [
        ("cnn3", 98.5),
        ("fast", 95.5),
        ("linear", 90.5),
    ]
    lines = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert lines[2].split(" | ")[6:8] == ["best val acc %", "best-val ckpt test acc %"]
    assert lines[4].startswith("| cnn3 ★ |") and "| 98.50 ± 0.71 | 97.00 ± 0.00 |" in lines[4]
    assert sum("★ |" in line for line in lines) == 1


def test_vs_ref_is_not_comparable_for_a_training_subset(store, tmp_path):
    exp = store.create_experiment("table")
    parent = sweep(store, exp, 1000)
    for subset in (5000, None):
        log_run(store, exp, "linear", 0, LINEAR, parent=parent, test__acc=0.9,
                epoch_time_s=[1.0] * 3, config={"data.train_subset": subset})  # fmt: skip

    compare(compare_config(tmp_path, "log_summary=false"), tmp_path / "out")

    subset, full = read_csv(tmp_path / "out" / "table.csv")
    assert (subset["train_images"], subset["vs_ref"]) == ("5000", "")
    assert (full["train_images"], float(full["vs_ref"])) == ("55000", pytest.approx(90 - 91.94))
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| 91.94 (3 ep) | - | n/c |" in markdown and "| 91.94 (3 ep) | - | -1.94 |" in markdown
    assert (
        "- **n/c** linear data.train_subset=5000: 5,000 training images, 3 epochs; the "
        "reference 55,000 images, 3 epochs" in markdown
    )


def test_compare_adds_no_run_to_the_training_runs(store, tmp_path):
    exp = store.create_experiment("table")
    parent = sweep(store, exp, 1000)
    log_run(store, exp, "linear", 0, LINEAR, parent=parent, test__acc=0.9)
    before = {run.info.run_id for run in store.search_runs([exp])}

    compare(compare_config(tmp_path), tmp_path / "out")

    assert {run.info.run_id for run in store.search_runs([exp])} == before
    summaries = store.get_experiment_by_name("table/compare").experiment_id
    (summary,) = store.search_runs([summaries])
    assert summary.data.tags["compare.parent_run_id"] == parent
    assert {a.path for a in store.list_artifacts(summary.info.run_id)} == {
        "table.md", "table.csv", "chart.png"
    }  # fmt: skip
