"""Stopped sweeps resume: what identifies a job (the config hash) and a sweep (its command
line), and, end to end through the real script and launchers, a 4-job sweep stopped with
SIGTERM to its launcher after 2 jobs finished, then run again with sweep.resume=true; a
stopped launcher says so in one line and exits with the signal's status."""

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import joblib
import pytest
from hydra import compose, initialize_config_dir
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mnist.config import validate_config
from mnist.context import PARENT_RUN_FILE, JobContext
from mnist.errors import ConfigError, SweepInterrupted
from mnist.metric_names import VAL_ACC
from mnist.reporting.compare import compare
from mnist.resume import resume_config
from mnist.sweeps.resume import resume_job, sweep_sha256
from mnist.tracking.params import CONFIG_HASH_TAG, config_sha256, run_params
from mnist.tracking.store import PARENT_TAG
from mnist.tracking.sweep_runs import SUPERSEDED_TAG, SUPERSEDES_TAG, current_runs, mark_superseded
from tests.helpers import CONF_DIR, TRAIN_SCRIPT, tiny_overrides
from tests.helpers.compare import compare_config, read_csv
from tests.helpers.runs import sqlite_rows, wait_until


def test_config_hash_changes_with_what_a_run_computes_only(tiny_cfg, tmp_path):
    base = config_sha256(tiny_cfg())
    assert base == config_sha256(tiny_cfg())
    for computes in (
        "model=cnn24k", "seed=1", "optimizer.lr=0.002", "trainer.epochs=3",
        "augmentation=rotate7", "data.val_size=101", "trainer.label_smoothing=0.1",
        "trainer.ema_decay=0.999",
    ):  # fmt: skip
        assert config_sha256(tiny_cfg(computes)) != base, computes
    for where_or_how in (
        f"paths.outputs={tmp_path / 'elsewhere'}", f"paths.mlruns={tmp_path / 'store'}",
        f"data.root={tmp_path / 'copy'}", "logger.experiment=other", "logger.log_model=true",
        "logger.run_name=named", "trainer.progress=true",
        f"trainer.resume={tmp_path / 'last.pt'}", "sweep.resume=true",
    ):  # fmt: skip
        assert config_sha256(tiny_cfg(where_or_how)) == base, where_or_how


def test_a_config_stored_before_a_key_existed_is_the_same_job_and_resumes(tiny_cfg, tmp_path):
    """Runs stored before trainer.ema_decay existed (config.ADDED_KEYS) match today's."""
    cfg = tiny_cfg()
    stored = OmegaConf.to_container(cfg, resolve=True)  # as runs store it
    del stored["trainer"]["ema_decay"]
    assert config_sha256(stored) == config_sha256(cfg)
    assert run_params(OmegaConf.create(stored), {}) == run_params(cfg, {})
    assert "trainer.ema_decay" not in run_params(cfg, {})
    assert "trainer.ema_decay" in run_params(tiny_cfg("trainer.ema_decay=0.99"), {})
    resumed = resume_config({"config": stored}, tmp_path / "last.pt", cfg.device)
    assert resumed.trainer == cfg.trainer


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


def test_a_job_of_a_resumed_sweep_finds_what_its_earlier_run_left(tiny_cfg, tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.create_experiment("mnist")
    parent = client.create_run(experiment).info.run_id

    def earlier_run(cfg, status: str, output_dir: Path) -> str:
        tags = {PARENT_TAG: parent, CONFIG_HASH_TAG: config_sha256(cfg), "model": "fast",
                "output_dir": str(output_dir)}  # fmt: skip
        run_id = client.create_run(experiment, tags=tags).info.run_id
        client.log_metric(run_id, "best/val_acc", 0.5)
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return run_id

    def resume(cfg):
        ctx = JobContext(output_dir=tmp_path / "new", parent_run_id=parent)
        return (*resume_job(cfg, ctx), ctx)

    finished, interrupted, lost = (tiny_cfg("sweep.resume=true", f"seed={s}") for s in range(3))
    done_id = earlier_run(finished, "FINISHED", tmp_path / "done")
    killed_id = earlier_run(interrupted, "KILLED", tmp_path / "killed")
    (tmp_path / "killed" / "checkpoints").mkdir(parents=True)
    (tmp_path / "killed" / "checkpoints" / "last.pt").write_bytes(b"state")
    # SIGKILL before its first last.pt: the process never ended its run.
    lost_id = earlier_run(lost, "RUNNING", tmp_path / "lost")

    _, done, _ = resume(finished)
    assert done == {"best/val_acc": 0.5, "run_id": done_id}
    # The same job outside a resumed sweep trains as always.
    assert resume(tiny_cfg("seed=0"))[1] is None
    cfg, done, _ = resume(interrupted)
    assert (cfg.trainer.resume, done, interrupted.trainer.resume) == (killed_id, None, None)
    cfg, done, ctx = resume(lost)
    assert (cfg.trainer.resume, done, ctx.extra_tags) == (None, None, {SUPERSEDES_TAG: lost_id})
    mark_superseded(client.tracking_uri, ctx, "new-run")
    superseded = client.get_run(lost_id)
    assert superseded.data.tags[SUPERSEDED_TAG] == "new-run"
    assert (superseded.info.status, superseded.info.end_time is None) == ("FAILED", False)
    assert current_runs([client.get_run(lost_id)]) == []
    # Superseded, it is no longer the job's earlier run.
    assert resume(lost)[2].extra_tags == {}


def test_sweep_resume_must_be_a_boolean(tiny_cfg):
    with pytest.raises(ConfigError, match=r"sweep.resume='yes' must be true or false"):
        validate_config(tiny_cfg("sweep.resume=yes"))


def _runs(store: Path) -> dict[str, tuple[str, bool]]:
    """{run id: (status, whether it has trained an epoch)} of the training runs, read
    without MLflow's client, so that polling costs the sweep under test no imports."""
    rows = sqlite_rows(
        store,
        "SELECT r.run_uuid, r.status, EXISTS (SELECT 1 FROM latest_metrics l "
        f"WHERE l.run_uuid = r.run_uuid AND l.key = '{VAL_ACC}') FROM runs r "
        "JOIN tags m ON m.run_uuid = r.run_uuid AND m.key = 'model'",
    )
    return {run_id: (status, bool(trained)) for run_id, status, trained in rows}


def _two_finished_and_one_training(store: Path) -> bool:
    runs = _runs(store).values()
    finished = sum(status == "FINISHED" for status, _ in runs)
    return finished >= 2 and any(status == "RUNNING" and trained for status, trained in runs)


def _sweep_until_two_jobs_finished(command: list[str], store: Path, log: Path) -> int:
    """Run the sweep and send SIGTERM to its launcher once 2 jobs are FINISHED and another
    one has trained an epoch (so it has a last.pt to resume from); its exit status. The
    launcher gets a session of its own, so that the test can check that no process of the
    sweep outlives it (joblib's workers would otherwise train on)."""
    with log.open("w") as out:
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
    try:
        wait_until(lambda: _two_finished_and_one_training(store), launcher, log,
                   "2 jobs did not finish")  # fmt: skip
        launcher.send_signal(signal.SIGTERM)
        status = launcher.wait(timeout=300)
        _wait_until_gone(launcher.pid)
        return status
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)


def _assert_stopped_in_one_line(printed: str, signum: int) -> None:
    """No traceback; one line saying that the sweep stopped and how to continue it, and not
    a job's own trainer.resume=<its last.pt>."""
    assert "Traceback" not in printed, printed[-3000:]
    name = signal.Signals(signum).name
    assert [line for line in printed.splitlines() if line.startswith("stopped:")] == [
        f"stopped: sweep stopped by {name}; run the same command with sweep.resume=true to "
        "continue it"
    ]
    assert "trainer.resume" not in printed


# A joblib sweep through the script: its launcher and two workers each import torch and MLflow
# (~30 s on 2 cores). SIGTERM to the launcher, which passes it on to the workers: the stop and
# resume tests below check the same one line, each launcher's; and
# test_a_workers_sweep_stop_goes_back_to_its_launcher_intact the status of each signal.
@pytest.mark.slow
def test_a_sweep_stopped_with_ctrl_c_ends_in_one_line_naming_sweep_resume(synthetic_root, tmp_path):
    """A stopped joblib launcher printed a KeyboardInterrupt traceback and exited 1; on
    Ctrl-C, joblib killed the workers while they were stopping, and a run could stay
    RUNNING. Then each job still said to go on with its own trainer.resume=<its last.pt>
    (the basic launcher's job, with status 130 whatever the signal), where the sweep's
    command with sweep.resume=true is what continues the sweep. The short job's worker is
    between jobs when the signal comes: Python's KeyboardInterrupt there could be dropped
    ("Exception ignored in ...") and the worker went on to a next job."""
    signum = signal.SIGINT
    store = tmp_path / "mlruns" / "mlflow.db"
    command = [
        sys.executable, str(TRAIN_SCRIPT), "-m",
        *tiny_overrides(synthetic_root, tmp_path),
        "trainer.epochs=2,1000", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    ]  # fmt: skip
    log, errors = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with log.open("w") as out, errors.open("w") as err:
        sweep = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
    try:
        one_finished_one_training = [("FINISHED", True), ("RUNNING", True)]
        wait_until(lambda: sorted(_runs(store).values()) == one_finished_one_training, sweep,
                   errors, "the jobs did not start")  # fmt: skip
        os.killpg(sweep.pid, signum)  # as a terminal sends it: to the foreground group
        assert sweep.wait(timeout=300) == 130, errors.read_text()[-3000:]
        _wait_until_gone(sweep.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)
    printed = errors.read_text() + log.read_text()
    _assert_stopped_in_one_line(printed, signum)
    assert "Exception ignored" not in printed
    assert sorted(status for status, _ in _runs(store).values()) == ["FINISHED", "KILLED"]


def test_a_workers_sweep_stop_goes_back_to_its_launcher_intact():
    """A joblib worker's exception is pickled back to its launcher: one that cannot be made
    again broke the pool, and loky killed the other workers while they saved a last.pt."""
    for signum, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        stopped = pickle.loads(pickle.dumps(SweepInterrupted(signum)))
        assert (str(stopped), stopped.status) == (str(SweepInterrupted(signum)), status)
        assert signal.Signals(signum).name in str(stopped)


def test_a_worker_keeps_a_stop_between_jobs_and_a_second_one_stops_it_at_once():
    """A joblib worker between two jobs took the launcher's SIGINT as Python's
    KeyboardInterrupt, which a weakref callback could drop: its next job trained on, and its
    run stayed RUNNING. In an interpreter of its own, as the handler is the whole process's."""
    script = textwrap.dedent(
        """
        import signal
        from mnist.training.signals import keep_stops_between_jobs, kept_stop, stop_on_signals
        keep_stops_between_jobs()
        with stop_on_signals() as requested:  # a job that ran to its end
            assert requested() is None
        signal.raise_signal(signal.SIGINT)  # between two jobs
        assert kept_stop() == signal.SIGINT
        with stop_on_signals() as requested:  # the next job: stopped from its start
            assert requested() == signal.SIGINT
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            print("stopped at once")
        """
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert (ran.returncode, ran.stdout) == (0, "stopped at once\n"), ran.stderr[-3000:]


def _wait_until_gone(group: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    raise AssertionError("processes of the stopped sweep are still running")


def _stop_and_resume(
    synthetic_root: Path, tmp_path: Path, jobs: list[str], *launcher: str
) -> list[Run]:
    """The 4-job sweep `jobs` stopped with SIGTERM once 2 jobs finished and another trained
    an epoch, then resumed; its 4 runs, in the order they started."""
    store = tmp_path / "mlruns" / "mlflow.db"
    command = [
        sys.executable, str(TRAIN_SCRIPT), "-m",
        *tiny_overrides(synthetic_root, tmp_path),
        "trainer.epochs=6", "logger.experiment=sweep", "model=fast", *jobs, *launcher,
    ]  # fmt: skip
    log = tmp_path / "stopped.log"
    status = _sweep_until_two_jobs_finished(command, store, log)
    assert status == 143, log.read_text()[-3000:]
    printed = log.read_text()
    assert "database is locked" not in printed
    stopped = _runs(store)
    _assert_stopped_in_one_line(printed, signal.SIGTERM)
    assert {status for status, _ in stopped.values()} == {"FINISHED", "KILLED"}, stopped
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
    assert "database is locked" not in resumed.stderr

    experiment_id = client.get_experiment_by_name("sweep").experiment_id
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    (parent,) = [run for run in runs if "model" not in run.data.tags]
    children = [
        run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    counted = [run for run in children if SUPERSEDED_TAG not in run.data.tags]
    assert len(counted) == 4
    assert {run.info.status for run in counted} == {"FINISHED"}
    assert len({run.data.tags[CONFIG_HASH_TAG] for run in counted}) == 4
    # The two finished jobs are untouched: same runs, same end, same metrics.
    for run_id, before in finished.items():
        after = client.get_run(run_id)
        assert (after.info.end_time, after.data.metrics) == (
            before.info.end_time,
            before.data.metrics,
        )
    # The job stopped mid-training continued its own run from its last.pt; one stopped
    # before it had one was trained again as a new run.
    killed = [
        client.get_run(run_id) for run_id, (status, _) in stopped.items() if status == "KILLED"
    ]
    assert any(run.info.status == "FINISHED" for run in killed), stopped
    for run in killed:
        assert run.info.status == "FINISHED" or SUPERSEDED_TAG in run.data.tags
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["sweep.jobs"], parent.data.tags["sweep.failed_jobs"]) == ("4", "0")
    (first, second) = sorted(tmp_path.glob(f"outputs/multirun/*/*/{PARENT_RUN_FILE}"))
    assert first.read_text() == second.read_text() == parent.info.run_id

    config = compare_config(tmp_path, f"parent_run_id={parent.info.run_id}", experiment="sweep")
    compare(config, tmp_path / "compare")
    rows = read_csv(tmp_path / "compare" / "table.csv")  # a row per config but the seed
    assert {(row["model"], row["failed"]) for row in rows} == {("fast", "0")}
    assert sum(int(row["runs"]) for row in rows) == 4
    return counted


# Two whole sweeps through the script (each one interpreter, its jobs in it): minutes.
@pytest.mark.slow
def test_a_sweep_stopped_with_sigterm_resumes_where_it_stopped(synthetic_root, tmp_path):
    """Also: the basic launcher runs jobs one after another in one process, and each job's
    torch globals, recorded as tags of its run, come from its own config, not the job
    before (the 4 jobs vary them)."""
    counted = _stop_and_resume(
        synthetic_root, tmp_path, ["trainer.deterministic=true,false", "device.num_threads=1,2"]
    )
    ran_with = []
    for run in counted:
        params, tags = run.data.params, run.data.tags
        deterministic = params["trainer.deterministic"].lower()
        assert tags["torch.deterministic"] == tags["cudnn.deterministic"] == deterministic
        assert tags["torch.num_threads"] == params["device.num_threads"]
        assert tags["cudnn.benchmark"] == "false"  # a CPU job never autotunes
        ran_with.append((tags["torch.deterministic"], tags["torch.num_threads"]))
    assert ran_with == [("true", "1"), ("true", "2"), ("false", "1"), ("false", "2")]


# The workers are other processes, which SIGTERM to the launcher does not reach by itself.
# Also: the two workers share a store the launcher has just created ("database is locked" in
# neither sweep), and joblib caps their threads.
@pytest.mark.slow
def test_a_joblib_sweep_stopped_with_sigterm_stops_its_workers_and_resumes(
    synthetic_root, tmp_path, monkeypatch
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # joblib caps it, not tests/__init__
    counted = _stop_and_resume(
        synthetic_root, tmp_path, ["seed=0,1,2,3"], "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    assert sorted(run.data.params["seed"] for run in counted) == ["0", "1", "2", "3"]
    # joblib caps each worker's threads at cores // n_jobs: two jobs never oversubscribe.
    for run in counted:
        assert int(run.data.tags["torch.num_threads"]) <= max(joblib.cpu_count() // 2, 1)
