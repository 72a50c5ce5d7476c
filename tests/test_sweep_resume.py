"""Stopped sweeps resume: what identifies a job (the config hash) and a sweep (its command
line), and, end to end through the real script and launchers, a 4-job sweep stopped with
SIGTERM to its launcher after 2 jobs finished, then run again with sweep.resume=true."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mnist.reporting.compare import compare
from mnist.tracking.config_hash import CONFIG_HASH_TAG, config_sha256
from mnist.tracking.sweep import PARENT_RUN_FILE
from mnist.tracking.sweep_resume import SUPERSEDED_TAG, sweep_sha256
from tests.helpers import CONF_DIR, TRAIN_SCRIPT, tiny_overrides
from tests.helpers.compare import compare_config, read_csv


def test_config_hash_changes_with_what_a_run_computes_only(tiny_cfg, tmp_path):
    base = config_sha256(tiny_cfg())
    assert base == config_sha256(tiny_cfg())
    for computes in (
        "model=cnn24k", "seed=1", "optimizer.lr=0.002", "trainer.epochs=3",
        "augmentation=rotate7", "data.val_size=101", "trainer.label_smoothing=0.1",
    ):  # fmt: skip
        assert config_sha256(tiny_cfg(computes)) != base, computes
    for where_or_how in (
        f"paths.outputs={tmp_path / 'elsewhere'}", f"paths.mlruns={tmp_path / 'store'}",
        f"data.root={tmp_path / 'copy'}", "logger.experiment=other", "logger.log_model=true",
        "logger.tensorboard=true", "logger.run_name=named", "trainer.progress=true",
        f"trainer.resume={tmp_path / 'last.pt'}", "sweep.resume=true",
    ):  # fmt: skip
        assert config_sha256(tiny_cfg(where_or_how)) == base, where_or_how


def test_a_sweep_is_its_command_line_without_paths_launcher_and_resume_flag(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("train", return_hydra_config=True)

    def sweep_hash(*overrides: str, preset_sweep: dict | None = None) -> str:
        variant = config.copy()
        OmegaConf.update(variant, "hydra.overrides.task", list(overrides))
        OmegaConf.update(variant, "hydra.sweeper.params", preset_sweep, merge=False)
        return sweep_sha256(variant)

    base = sweep_hash("model=fast,cnn24k", "seed=0,1")
    assert base == sweep_hash(
        "model=fast,cnn24k", "hydra/launcher=joblib", "seed=0,1", "hydra.launcher.n_jobs=2",
        "sweep.resume=true", f"paths.outputs={tmp_path}", f"data.root={tmp_path}",
    )  # fmt: skip
    assert base != sweep_hash("model=fast,cnn24k", "seed=0,1,2")
    assert base != sweep_hash("model=fast", "seed=0,1")
    # An experiment preset's sweep is part of it: editing the preset makes another sweep.
    assert sweep_hash("experiment=x", preset_sweep={"seed": "0,1"}) != sweep_hash(
        "experiment=x", preset_sweep={"seed": "0,1,2"}
    )


def _runs(store: Path) -> dict[str, tuple[str, str | None]]:
    """{run id: (status, parent run id)} of the training runs, read without MLflow's
    client, so that polling costs the sweep under test no CPU for imports."""
    if not store.is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30) as db:
            rows = db.execute(
                "SELECT r.run_uuid, r.status, p.value FROM runs r "
                "JOIN tags m ON m.run_uuid = r.run_uuid AND m.key = 'model' "
                "LEFT JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = 'mlflow.parentRunId'"
            ).fetchall()
    except sqlite3.OperationalError:  # the schema is still being created
        return {}
    return {run_id: (status, parent) for run_id, status, parent in rows}


def _sweep_until_two_jobs_finished(command: list[str], store: Path, log: Path) -> int:
    """Run the sweep and send SIGTERM to its launcher once 2 jobs are FINISHED; its exit
    status. The launcher gets a session of its own, so that the test can check that no
    process of the sweep outlives it (joblib's workers would otherwise train on)."""
    with log.open("w") as out:
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while sum(status == "FINISHED" for status, _ in _runs(store).values()) < 2:
            assert launcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "2 jobs did not finish in 10 minutes"
            time.sleep(0.2)
        launcher.send_signal(signal.SIGTERM)
        status = launcher.wait(timeout=300)
        _wait_until_gone(launcher.pid)
        return status
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)


def _wait_until_gone(group: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    raise AssertionError("processes of the stopped sweep are still running")


def _stop_and_resume(synthetic_root: Path, tmp_path: Path, *launcher: str) -> None:
    store = tmp_path / "mlruns" / "mlflow.db"
    command = [
        sys.executable, str(TRAIN_SCRIPT), "-m",
        *[o for o in tiny_overrides(synthetic_root, tmp_path) if o != "trainer.epochs=2"],
        "trainer.epochs=6", "logger.experiment=sweep", "model=fast", "seed=0,1,2,3", *launcher,
    ]  # fmt: skip
    status = _sweep_until_two_jobs_finished(command, store, tmp_path / "stopped.log")
    assert status != 0, (tmp_path / "stopped.log").read_text()[-3000:]
    stopped = _runs(store)
    client = MlflowClient(f"sqlite:///{store}")
    finished = {
        run_id: client.get_run(run_id)
        for run_id, (status, _) in stopped.items()
        if status == "FINISHED"
    }
    assert 2 <= len(finished) < 4, stopped

    resumed = subprocess.run([*command, "sweep.resume=true"], capture_output=True, text=True,
                             timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (resumed.stdout + resumed.stderr).count("not re-run") == len(finished)

    experiment_id = client.get_experiment_by_name("sweep").experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [run for run in runs if "model" not in run.data.tags]
    children = [
        run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    counted = [run for run in children if SUPERSEDED_TAG not in run.data.tags]
    assert sorted(run.data.params["seed"] for run in counted) == ["0", "1", "2", "3"]
    assert {run.info.status for run in counted} == {"FINISHED"}
    assert len({run.data.tags[CONFIG_HASH_TAG] for run in counted}) == 4
    # The two finished jobs are untouched: same runs, same end, same metrics.
    for run_id, before in finished.items():
        after = client.get_run(run_id)
        assert (after.info.end_time, after.data.metrics) == (
            before.info.end_time,
            before.data.metrics,
        )
    # The interrupted jobs continued their own runs where a last.pt let them.
    for run_id, (status, _) in stopped.items():
        if status == "KILLED":
            assert client.get_run(run_id).info.status == "FINISHED"
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["sweep.jobs"], parent.data.tags["sweep.failed_jobs"]) == ("4", "0")
    (first, second) = sorted(tmp_path.glob(f"outputs/multirun/*/*/{PARENT_RUN_FILE}"))
    assert first.read_text() == second.read_text() == parent.info.run_id

    config = compare_config(tmp_path, f"parent_run_id={parent.info.run_id}", experiment="sweep")
    compare(config, tmp_path / "compare")
    (row,) = read_csv(tmp_path / "compare" / "table.csv")
    assert (row["model"], row["runs"], row["failed"]) == ("fast", "4", "0")


# Two whole sweeps through the script (each one interpreter, its jobs in it): minutes.
@pytest.mark.slow
def test_a_sweep_stopped_with_sigterm_resumes_where_it_stopped(synthetic_root, tmp_path):
    _stop_and_resume(synthetic_root, tmp_path)


# The workers are other processes, which SIGTERM to the launcher does not reach by itself.
@pytest.mark.slow
def test_a_joblib_sweep_stopped_with_sigterm_stops_its_workers_and_resumes(
    synthetic_root, tmp_path
):
    _stop_and_resume(synthetic_root, tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
