"""Sweeps end to end on tiny synthetic data, through the real scripts and launchers: one MLflow
experiment with a parent run per sweep, each job a child run, read back from a SQLite store
or over HTTP from a real `mlflow server`."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from mnist.context import PARENT_RUN_FILE
from mnist.reporting.compare import compare
from mnist.sweeps.callback import MlflowSweep, refuse_invalid_sweep
from mnist.tracking.registry import promote_sweep
from tests.helpers import CONF_DIR, TRAIN_SCRIPT, run_train_script, tiny_overrides
from tests.helpers.compare import compare_config, read_csv
from tests.helpers.server import mlflow_server

PARENT_TAG = "mlflow.parentRunId"
# A model whose head has 5 outputs for 10 classes: it builds, then fails in its first batch,
# inside its MLflow run, as a crashing job would.
# The job that breaks inside its run: a valid model (one stage, no hidden layer), whose
# job finds a directory where it writes its first last.pt (block_checkpoints).
BROKEN_MODEL = "_target_: mnist.models.ConvNet\nstages: [[4]]\nhidden: null\n"


def block_checkpoints(sweep_dir: Path, job: int) -> None:
    """Job `job` of a sweep run with hydra.sweep.subdir=${hydra.job.num} fails in its first
    epoch, inside its MLflow run: something no validation can see."""
    (sweep_dir / str(job) / "checkpoints" / "last.pt").mkdir(parents=True)


def sweep_overrides(data_root: Path, tmp_path: Path) -> list[str]:
    one_epoch = [*tiny_overrides(data_root, tmp_path), "trainer.epochs=1"]
    return ["-m", *one_epoch, "logger.experiment=sweep"]


def parent_and_children(client: MlflowClient, experiment: str = "sweep"):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    parents = [run for run in runs if "model" not in run.data.tags]
    assert len(parents) == 1, [run.info.run_name for run in parents]
    children = [run for run in runs if "model" in run.data.tags]
    assert {run.data.tags[PARENT_TAG] for run in children} == {parents[0].info.run_id}
    return parents[0], children


@pytest.mark.slow  # a whole script end to end, ~35 s; CI runs it
def test_sweep_is_a_parent_run_of_child_runs_that_compare_tables(
    synthetic_root, tmp_path, made_store
):
    """Also: a job can fail before its MLflow run opens, on something no validation sees
    (here a directory where the linear job writes its config.yaml): it becomes a FAILED
    child with its error, beside a job that failed inside its run (broken), and the parent
    counts the jobs Hydra launched."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "broken.yaml").write_text(BROKEN_MODEL)
    sweep_dir = tmp_path / "outputs" / "sweep"
    block_checkpoints(sweep_dir, 2)
    blocked = sweep_dir / "3" / "config.yaml"
    blocked.mkdir(parents=True)
    sweep = run_train_script(
        "--config-dir", str(tmp_path / "conf"), *sweep_overrides(synthetic_root, tmp_path),
        "model=fast,cnn24k,broken,linear", "trainer.test_every_epoch=true",
        "logger.log_model=true", f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra.job.num}",
    )  # fmt: skip
    assert sweep.returncode == 1  # the failed jobs fail the sweep...
    assert f"cannot write {sweep_dir / '2' / 'checkpoints' / 'last.pt'}" in sweep.stderr
    assert "Sweep parent run" in sweep.stdout + sweep.stderr
    assert "4 jobs, 2 not finished" in sweep.stdout + sweep.stderr
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent, children = parent_and_children(client)
    # ...after every job ran: the failure is recorded, not lost.
    assert [(r.data.tags["model"], r.info.status) for r in children] == [
        ("fast", "FINISHED"),
        ("cnn24k", "FINISHED"),
        ("broken", "FAILED"),
        ("linear", "FAILED"),
    ]
    error = f"RunFailed: the run stopped on an I/O error (Is a directory: {blocked});"
    assert children[3].data.tags["error"].startswith(error)
    assert "error" not in children[2].data.tags  # its own run, ended FAILED by the job
    parent_file = sweep_dir / PARENT_RUN_FILE
    assert parent_file.read_text() == parent.info.run_id
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FAILED"
    assert (parent.data.tags["sweep.jobs"], parent.data.tags["sweep.failed_jobs"]) == ("4", "2")
    # Each child named by the one key the sweep varies; the parent is the sweep's summary.
    assert [r.info.run_name for r in children] == ["fast", "cnn24k", "broken", "linear"]
    assert parent.data.params == {"model": "fast,cnn24k,broken,linear"}
    for model, run in zip(("fast", "cnn24k"), children, strict=False):
        summary = parent.data.metrics
        assert summary[f"summary/{model}/test/acc_mean"] == run.data.metrics["test/acc"]
        assert summary[f"summary/{model}/best/val_acc_mean"] == run.data.metrics["best/val_acc"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "table.md", "table.csv", "chart.png",
    }  # fmt: skip
    # Its description opens with the winner, and links the sweep's own runs.
    description = parent.data.tags["mlflow.note.content"]
    assert description.startswith(f"**Winner: {children[0].data.tags['model']}**") or (
        description.startswith(f"**Winner: {children[1].data.tags['model']}**")
    )
    assert f"viewStateShareKey=runs-of-{parent.info.run_id}" in description
    incomplete = f"sweep {parent.info.run_id} is incomplete: 2 of its 4 jobs finished"
    assert incomplete in description

    # In process: scripts/compare.py only adds Hydra's output directory, and another
    # interpreter would cost this 2-core test machine half a minute of imports.
    config = compare_config(tmp_path, f"parent_run_id={parent.info.run_id}", experiment="sweep")
    compare(config, tmp_path / "compare")
    rows = read_csv(tmp_path / "compare" / "table.csv")
    # The best validation accuracy first; the runs that did not finish have none: last. (A run
    # with no params, as one that failed before it opened, is a row of its own beside the
    # finished runs of its model: test_compare's test_runs_of_different_configs_are_rows_...)
    by_validation = sorted(children[:2], key=lambda run: -run.data.metrics["best/val_acc"])
    assert [(r["model"], r["runs"], r["failed"]) for r in rows] == [
        *((run.data.tags["model"], "1", "0") for run in by_validation),
        ("broken", "0", "1"),
        ("linear", "0", "1"),
    ]
    for row, run in zip(rows[:2], by_validation, strict=True):
        last_epoch = client.get_metric_history(run.info.run_id, "test/acc_epoch")[-1].value
        # To 6 significant digits: what the data resolves, without float noise.
        assert float(row["final_acc_mean"]) == pytest.approx(100 * last_epoch, rel=1e-6)
        test_acc = run.data.metrics["test/acc"]
        assert float(row["best_val_ckpt_acc_mean"]) == pytest.approx(100 * test_acc, rel=1e-6)
        assert float(row["params"]) == run.data.metrics["params_count"]
        seconds = run.data.metrics["train_time_s"]
        assert row["train_time_s"] == f"{seconds:.6g}"
    table = (tmp_path / "compare" / "table.md").read_text()
    broken = children[2]
    assert "| 1 | MaxPool | n/a | 0 + 1 failed | n/a | n/a | n/a |" in table
    assert f"| broken | {broken.info.run_name} | FAILED | {broken.info.run_id} |" in table
    assert incomplete in table
    assert (tmp_path / "compare" / "chart.png").stat().st_size > 10_000
    # Not among the training runs: in an experiment of its own, naming the sweep.
    assert len(client.search_runs([parent.info.experiment_id])) == 5
    summaries = client.get_experiment_by_name("sweep/compare").experiment_id
    (summary,) = client.search_runs([summaries], "attributes.run_name = 'compare'")
    assert summary.data.tags["compare.parent_run_id"] == parent.info.run_id
    assert {a.path for a in client.list_artifacts(summary.info.run_id)} == {
        "table.md", "table.csv", "chart.png",
    }  # fmt: skip
    promotion = str(promote_sweep(uri, "sweep", None, "digits"))
    assert by_validation[0].info.run_id in promotion
    assert f"warning: {incomplete}" in promotion


# Slow: a whole script end to end (~25 s on 2 cores).
@pytest.mark.slow
def test_a_job_that_stops_the_sweep_before_its_run_opens_is_counted(
    synthetic_root, tmp_path, empty_mlflow_db
):
    """A value valid for MNIST but not for the data at hand (600 training images) refuses
    the second job in one line when it starts, which ends the sweep: the parent counts
    the 2 jobs launched, the refused one has a FAILED run, and reports on the sweep say
    it is incomplete."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    sweep = run_train_script(*sweep_overrides(synthetic_root, tmp_path), "data.val_size=100,600")
    assert sweep.returncode == 2
    assert "error: data.val_size=600 must be between 1 and 599" in sweep.stderr
    assert "2 jobs, 1 not finished" in sweep.stdout + sweep.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    parent, children = parent_and_children(client)
    assert [r.info.status for r in children] == ["FINISHED", "FAILED"]
    assert parent.info.status == "FAILED"
    assert (parent.data.tags["sweep.jobs"], parent.data.tags["sweep.failed_jobs"]) == ("2", "1")
    config = compare_config(tmp_path, f"parent_run_id={parent.info.run_id}", experiment="sweep")
    compare(config, tmp_path / "compare")
    assert (
        f"sweep {parent.info.run_id} is incomplete: 1 of its 2 jobs finished; the others "
        "failed or did not run" in (tmp_path / "compare" / "table.md").read_text()
    )


# Slow: a whole script end to end, no training (~15 s on 2 cores).
@pytest.mark.slow
def test_a_sweep_whose_jobs_failed_before_their_runs_opened_keeps_why_on_their_runs(
    synthetic_root, tmp_path, empty_mlflow_db
):
    """Every job that ran was refused as it started (a validation split the 600 images at
    hand cannot give), which ends the sweep: the reason was on the screen only, and the
    sweep's end said its summary could not be made: "no training runs ... or run the
    sweep first"."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    sweep = run_train_script(*sweep_overrides(synthetic_root, tmp_path), "data.val_size=600,700")
    assert sweep.returncode == 2
    reason = "data.val_size=600 must be between 1 and 599"
    assert sweep.stderr.splitlines() == [f"error: {reason}"]
    printed = sweep.stdout + sweep.stderr
    assert "run the sweep first" not in printed
    assert "2 jobs, 2 not finished: 1 FAILED, 1 with no run" in printed
    parent, (refused,) = parent_and_children(
        MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    )
    assert (parent.info.status, refused.info.status) == ("FAILED", "FAILED")
    # The run's description, on its page in MLflow's UI.
    assert refused.data.tags["mlflow.note.content"] == (
        f"Failed before its MLflow run opened: DataError: {reason}"
    )
    assert (parent.data.tags["sweep.jobs"], parent.data.tags["sweep.failed_jobs"]) == ("2", "2")


def test_a_sweep_that_ends_with_no_run_says_so_without_a_summary(tmp_path, empty_mlflow_db, caplog):
    """A sweep stopped before any job opened its run (Ctrl-C while the first one loads its
    data) said at its end that its summary could not be made: "no training runs in
    experiment ...; check parent_run_id / filter, or run the sweep first"."""
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("sweep")
    parent = client.create_run(experiment_id).info.run_id
    sweep = MlflowSweep()
    sweep._parent = (uri, experiment_id, parent, tmp_path / "sweep", 2)
    with caplog.at_level(logging.INFO):
        sweep._end_parent()
    assert f"Sweep parent run {parent}: 2 jobs, 2 not finished: 2 with no run" in caplog.text
    assert "summary" not in caplog.text
    assert client.get_run(parent).info.status == "FAILED"


def test_a_sweep_with_an_invalid_job_is_refused_before_it_starts(synthetic_root, tmp_path):
    sweep = run_train_script(
        *sweep_overrides(synthetic_root, tmp_path), "seed=0,1", "optimizer.lr=0.01,-1"
    )
    assert sweep.returncode == 2
    assert sweep.stderr.splitlines() == [
        "error: sweep job 1 (seed=0 optimizer.lr=-1): Invalid config: optimizer.lr=-1 must be "
        "a finite number > 0. [2 of 4 jobs invalid; none was started]"
    ]
    assert not (tmp_path / "mlruns").exists()  # no parent run, no job run
    assert not (tmp_path / "outputs").exists()  # no sweep directory


def test_a_sweep_with_a_thread_count_torch_cannot_start_is_refused_before_it_starts(
    synthetic_root, tmp_path, capsys
):
    """Issue 30: the first job's 100000 threads left the sweep's one process without memory,
    the next job failed too, and the parent run stayed RUNNING: now no job starts. In-process:
    the check the sweep's callback runs as it starts, on a sweep as a preset gives it (the
    command line's: test_a_sweep_with_an_invalid_job_is_refused_before_it_starts)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", sweep_overrides(synthetic_root, tmp_path)[1:],
                      return_hydra_config=True)  # fmt: skip
        with open_dict(cfg):
            cfg.hydra.sweeper.params = {"device.num_threads": "100000,1"}
        with pytest.raises(SystemExit) as exited:
            refuse_invalid_sweep(cfg)
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: sweep job 0 (device.num_threads=100000): Invalid config: ")
    assert line.endswith("[1 of 2 jobs invalid; none was started]")
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "outputs").exists()


def test_a_typo_in_a_sweep_gets_hydras_error_as_in_a_single_run(synthetic_root, tmp_path):
    single = run_train_script(*sweep_overrides(synthetic_root, tmp_path)[1:], "trainer.epochz=1")
    sweep = run_train_script(*sweep_overrides(synthetic_root, tmp_path), "trainer.epochz=1,2")
    assert (single.returncode, sweep.returncode) == (1, 1)
    assert "Could not override 'trainer.epochz'" in sweep.stderr
    assert sweep.stderr.replace("=1,2", "=1") == single.stderr
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "outputs").exists()


# Two interpreters (server, a submitit job) besides the sweep's: a minute on 2 cores. One job
# is the path: a job in a process of its own logs over HTTP, beside its parent run.
@pytest.mark.slow
def test_submitit_jobs_log_to_a_tracking_server_over_http(synthetic_root, tmp_path):
    with mlflow_server(tmp_path) as url:
        sweep = subprocess.run(
            [sys.executable, str(TRAIN_SCRIPT), *sweep_overrides(synthetic_root, tmp_path),
             "hydra/launcher=submitit_local", "seed=0"],
            env={**os.environ, "MLFLOW_TRACKING_URI": url},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        client = MlflowClient(url)
        parent, children = parent_and_children(client)
        assert parent.info.status == "FINISHED"
        assert [(r.data.tags["seed"], r.info.status) for r in children] == [("0", "FINISHED")]
        config = client.download_artifacts(children[0].info.run_id, "config.yaml", str(tmp_path))
        assert "experiment: sweep" in Path(config).read_text()
        # Everything went to the server: the jobs did not fall back to a local store.
        assert not (tmp_path / "mlruns").exists()
