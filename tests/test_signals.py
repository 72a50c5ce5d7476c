"""SIGINT/SIGTERM at every phase of a run, until its MLflow run is closed (issue 12): the
run ends KILLED with a resume hint, and the resumed run finishes only what was left, so
that it records exactly what an uninterrupted run records."""

import logging
import signal
import subprocess
import sys

import mlflow.pytorch
import pytest
from mlflow.tracking import MlflowClient

import mnist.job as job_module
from mnist.context import JobContext
from mnist.errors import TrainingInterrupted
from mnist.job import run_training
from mnist.tools.reproduce import compare_runs
from mnist.tracking import runs
from tests.helpers import TRAIN_SCRIPT, tiny_overrides
from tests.helpers.runs import assert_logged_once_per_step, runs_in, signal_then, store


def models_of(client: MlflowClient, run) -> list:
    return client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )


def interrupt_and_resume(
    tiny_cfg, tmp_path, monkeypatch, phase, *recipe, overrides=(), signum=signal.SIGTERM,
    experiment="mnist",
):  # fmt: skip
    """Train with `signum` arriving as `phase` (a (module, function) pair) starts, in
    `experiment` of the store under tmp_path, its run directory under `tmp_path/experiment`;
    check the run was KILLED, resume it (`overrides` given with trainer.resume) and return it."""
    module, name = phase
    run_dir = tmp_path / experiment / "interrupted"
    recipe = [*recipe, f"logger.experiment={experiment}"]
    with monkeypatch.context() as patch, pytest.raises(TrainingInterrupted) as stopped:
        patch.setattr(module, name, signal_then(getattr(module, name), signum))
        run_training(tiny_cfg(*recipe), JobContext(output_dir=run_dir))
    last = run_dir / "checkpoints" / "last.pt"
    assert f"resume with trainer.resume={last}" in str(stopped.value)
    assert stopped.value.signum == signum
    client = store(tmp_path)
    (run_id,) = [run.info.run_id for run in runs_in(client, experiment)]
    assert client.get_run(run_id).info.status == "KILLED"
    overrides = [*overrides, f"trainer.resume={last}"]
    ctx = JobContext(output_dir=tmp_path / experiment, overrides=overrides)
    assert run_training(tiny_cfg(*overrides), ctx)["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert_logged_once_per_step(client, run_id)
    return run


def test_a_signal_in_the_final_test_kills_the_run_and_resume_logs_what_was_left(
    tiny_cfg, tmp_path, monkeypatch, caplog
):
    # The final metrics are logged after the test evaluation the signal arrived in, and
    # before the job honours it: the resumed run must not log them a second time.
    with caplog.at_level(logging.WARNING):
        run = interrupt_and_resume(
            tiny_cfg, tmp_path, monkeypatch, (job_module, "test_best"),
            overrides=["trainer.epochs=5", "seed=0"],
        )  # fmt: skip
    assert {"test/acc", "best/val_acc", "train_time_s"} <= set(run.data.metrics)
    # Overrides given with trainer.resume do not apply: the one that differs from the run's
    # own config is named (seed is 0 there too).
    assert "Ignored (the resumed run keeps its own config): trainer.epochs=5\n" in caplog.text


# Seven trainings, three with the model logged (~25 s on 2 cores).
@pytest.mark.slow
def test_a_signal_while_the_run_is_closing_kills_it_and_resume_logs_the_model_once(
    tiny_cfg, tmp_path, monkeypatch
):
    """Each phase of closing a run (reports, artifact logging, model logging), in its own
    experiment of one store, compared with one uninterrupted reference. The reports come
    right after the last epoch: there the signal is SIGINT (Ctrl-C), the one the handler
    shares with SIGTERM (mnist/training/signals.py), whose way out of scripts/train.py
    test_a_signal_after_the_last_epoch_exits_with_a_resume_hint runs."""
    reference = run_training(tiny_cfg(), JobContext(output_dir=tmp_path / "reference"))
    for phase, signum, experiment in [
        ((job_module, "write_training_reports"), signal.SIGINT, "reports"),
        ((runs, "log_artifacts"), signal.SIGTERM, "artifact-logging"),
        ((mlflow.pytorch, "save_model"), signal.SIGTERM, "model-logging"),
    ]:
        run = interrupt_and_resume(
            tiny_cfg, tmp_path, monkeypatch, phase, "logger.log_model=true", signum=signum,
            experiment=experiment,
        )  # fmt: skip
        assert [m.status for m in models_of(store(tmp_path), run)] == ["READY"], experiment
        # What reproduce.py compares: every metric at every step, and the weights' hash.
        rows = compare_runs(store(tmp_path).tracking_uri, reference["run_id"], run.info.run_id)
        assert [row.name for row in rows if not row.matches(0)] == [], experiment


def test_a_second_signal_during_model_logging_leaves_nothing_pending_after_resume(
    tiny_cfg, tmp_path, monkeypatch
):
    # The first signal waits for the model to be logged; the second stops at once, which
    # interrupts MLflow mid-log and leaves its logged model PENDING, without files.
    twice = signal_then(mlflow.pytorch.save_model, signal.SIGINT, signal.SIGINT)
    run_dir = tmp_path / "interrupted"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(mlflow.pytorch, "save_model", twice)
        run_training(tiny_cfg("logger.log_model=true"), JobContext(output_dir=run_dir))
    client = store(tmp_path)
    (run,) = runs_in(client)
    assert run.info.status == "KILLED"
    assert [m.status for m in models_of(client, run)] == ["PENDING"]

    last = run_dir / "checkpoints" / "last.pt"
    run_training(tiny_cfg(f"trainer.resume={last}"), JobContext(output_dir=tmp_path / "o"))
    (logged,) = models_of(client, run)
    assert logged.status == "READY"
    model = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
    assert sum(p.numel() for p in model.parameters()) == run.data.metrics["params_count"]


# An interpreter and a training (~10 s on 2 cores).
@pytest.mark.slow
def test_a_signal_after_the_last_epoch_exits_with_a_resume_hint(
    synthetic_root, tmp_path, made_store
):
    """A real SIGTERM from outside the process. SIGINT, which the same handler takes, comes
    in-process, after the last epoch too: test_a_signal_while_the_run_is_closing_kills_it..."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *tiny_overrides(synthetic_root, tmp_path),
         "logger.log_model=true", f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "epoch 2/2 train loss" in line:  # training is over; the run is not closed yet
            process.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=120) == 130, output[-3000:]
    last = run_dir / "checkpoints" / "last.pt"
    assert f"stopped: training interrupted; resume with trainer.resume={last}" in output
    assert "Traceback" not in output
    (run,) = runs_in(store(tmp_path))
    assert run.info.status == "KILLED"
