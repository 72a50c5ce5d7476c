"""Resuming a run safely (issue 12): a FINISHED run is refused, one job per run at a time,
no leftovers of killed writes, a full disk named (at start, mid-run, under the outputs or
the store: one line, resume suggested where a last.pt exists), and overrides that cannot
apply named."""

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

import mnist.training.checkpoint as checkpoint_module
from mnist.cli import exit_on_user_error
from mnist.context import JobContext
from mnist.disk import MIN_FREE_BYTES
from mnist.errors import CheckpointWriteError, ConfigError
from mnist.job import run_training
from mnist.tools.reproduce import compare_runs
from mnist.training.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import compose_config, run_train_script, tiny_overrides
from tests.helpers.runs import assert_logged_once_per_step, everything_logged, runs_in, store

FULL_DEVICE = Path("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not FULL_DEVICE.exists(), reason="no /dev/full here")


@contextmanager
def lock_held_by_another_process(directory: Path):
    """flock(directory) in a separate process, as a second training job would hold it."""
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_finished_run_or_one_in_use_cannot_be_resumed_and_nothing_is_logged(tiny_cfg, tmp_path):
    finished = run_training(tiny_cfg(), JobContext(output_dir=tmp_path / "run"))
    client = store(tmp_path)
    before = everything_logged(client, finished["run_id"])
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    leftover = last.parent / ".last.pt.k1ll3d.tmp"  # what a write killed mid-way leaves
    leftover.write_bytes(b"partial")
    resume = tiny_cfg(f"trainer.resume={last}")

    with lock_held_by_another_process(last.parent):  # as a second job on the run would
        with pytest.raises(ConfigError, match=f"another process is training in {last.parent}"):
            run_training(resume, JobContext(output_dir=tmp_path / "o"))
        assert leftover.exists()  # it could be the other process's write in progress
    with pytest.raises(ConfigError, match=f"run {finished['run_id']} is FINISHED, there is no"):
        run_training(resume, JobContext(output_dir=tmp_path / "o"))
    assert not leftover.exists()
    assert everything_logged(client, finished["run_id"]) == before


@contextmanager
def written_to_a_full_disk(path: Path):
    yield FULL_DEVICE


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real file system of `size` (tmpfs) at `mount_point` for the block: a disk that
    fills up. Unmounted lazily: MLflow keeps a store's database open until the process
    ends."""
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator[Path]:
    """A real 1 MB file system (tmpfs), mounted for the test: a disk that fills up."""
    with tmpfs(tmp_path / "small-disk", "1m") as disk:
        yield disk


def fill(disk: Path, leave: int = 0) -> None:
    """Writes one file on `disk` that leaves `leave` bytes free."""
    free = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - leave))


def filled_after_epoch(epoch: int, disk: Path, leave: int = 0) -> Callable[[dict, int], None]:
    """An epoch observer that fills `disk` once `epoch` is logged: after its best.pt, before
    its last.pt (mnist/training/loop.py)."""

    def observe(metrics: dict[str, float], logged: int) -> None:
        if logged == epoch:
            fill(disk, leave)

    return observe


def exit_and_stderr(cfg: DictConfig, ctx: JobContext, capsys) -> tuple[int, list[str]]:
    """run_training as scripts/train.py runs it: its exit status and its lines on stderr."""
    with pytest.raises(SystemExit) as exited, exit_on_user_error(cfg):
        run_training(cfg, ctx)
    return exited.value.code, capsys.readouterr().err.splitlines()


def test_a_checkpoint_that_fills_a_real_disk_is_named_in_one_line(small_tmpfs):
    """torch's zip writer reports the failed write as its own RuntimeError ("[enforce fail
    at inline_container.cc:671] . unexpected pos"), over the OSError that says why."""
    path = save_checkpoint({"weights": torch.ones(3)}, small_tmpfs / "last.pt")
    with pytest.raises(CheckpointWriteError) as failed:
        save_checkpoint({"weights": torch.zeros(2**19)}, path)  # 2 MB
    assert str(failed.value).startswith(f"no space left on {small_tmpfs} while writing last.pt")
    assert "the previous last.pt is intact" in str(failed.value)
    assert "\n" not in str(failed.value)
    assert torch.equal(load_checkpoint(path)["weights"], torch.ones(3))
    assert [p.name for p in small_tmpfs.iterdir()] == ["last.pt"]  # no temporary file left


@needs_dev_full
def test_a_full_disk_is_named_in_one_line_and_the_previous_checkpoint_is_kept(
    tmp_path, monkeypatch
):
    path = save_checkpoint({"weights": torch.ones(3)}, tmp_path / "last.pt")
    monkeypatch.setattr(checkpoint_module, "written_atomically", written_to_a_full_disk)
    with pytest.raises(CheckpointWriteError) as failed:
        save_checkpoint({"weights": torch.zeros(3)}, path)
    assert str(failed.value).startswith(f"no space left on {tmp_path} while writing last.pt")
    assert "the previous last.pt is intact" in str(failed.value)
    assert "\n" not in str(failed.value)
    assert torch.equal(load_checkpoint(path)["weights"], torch.ones(3))


# Three trainings (~20 s on 2 cores).
@pytest.mark.slow
@needs_dev_full
def test_a_run_that_fills_the_disk_fails_and_resumes_exactly(tiny_cfg, tmp_path, monkeypatch):
    real = checkpoint_module.written_atomically
    writes = []

    def second_last_pt_fills_the_disk(path: Path):
        writes.append(path.name)
        return written_to_a_full_disk(path) if writes.count("last.pt") == 2 else real(path)

    run_dir = tmp_path / "full"
    with monkeypatch.context() as patch, pytest.raises(CheckpointWriteError) as failed:
        patch.setattr(checkpoint_module, "written_atomically", second_last_pt_fills_the_disk)
        run_training(tiny_cfg(), JobContext(output_dir=run_dir))
    client = store(tmp_path)
    (run,) = runs_in(client)
    assert run.info.status == "FAILED"
    last = run_dir / "checkpoints" / "last.pt"
    assert str(failed.value) == (
        f"no space left on {last.parent} while writing last.pt (the previous last.pt is "
        f"intact); once that is fixed, resume the run: python scripts/train.py "
        f"trainer.resume={last}"
    )
    assert load_checkpoint(last)["progress"]["epoch"] == 2  # epoch 1's, intact

    resumed = run_training(tiny_cfg(f"trainer.resume={last}"), JobContext(output_dir=tmp_path))
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    # Epoch 2 was logged before its last.pt failed, and trained again: logged once.
    assert_logged_once_per_step(client, run.info.run_id)
    reference = run_training(tiny_cfg(), JobContext(output_dir=tmp_path / "reference"))
    rows = compare_runs(client.tracking_uri, reference["run_id"], resumed["run_id"])
    assert [row.name for row in rows if not row.matches(0)] == []


def test_a_first_last_pt_on_a_full_disk_says_to_run_the_command_again_not_to_resume(
    tiny_cfg, tmp_path, capsys
):
    """It said to resume the run, and resuming was refused: it had no last.pt."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        ctx = JobContext(output_dir=disk / "run", epoch_observer=filled_after_epoch(1, disk))
        status, lines = exit_and_stderr(tiny_cfg(), ctx, capsys)
        assert not (ctx.output_dir / "checkpoints" / "last.pt").exists()
    assert status == 1
    assert lines == [
        f"error: no space left on {disk}/run/checkpoints while writing last.pt (nothing was "
        "written); once that is fixed, run the same command again (the run has no last.pt "
        "to resume from)"
    ]
    (run,) = runs_in(store(tmp_path))
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("log_model", [True, False], ids=["the model", "the reports"])
def test_a_store_that_fills_during_an_upload_fails_the_run_that_then_resumes(
    log_model, tiny_cfg, tmp_path, empty_mlflow_db, capsys, caplog
):
    """About 20 tracebacks (MLflow logs each failed SQL statement), and the run stayed
    RUNNING: the failed upload had taken the room that recording the run's end needs."""
    with tmpfs(tmp_path / "disk", "16m") as disk:
        shutil.copy(empty_mlflow_db, disk / "mlflow.db")
        overrides = [f"paths.mlruns={disk}", f"logger.log_model={str(log_model).lower()}"]
        # After the last epoch, less room than the model, or the reports, need.
        observer = filled_after_epoch(2, disk, leave=64 * 1024)
        ctx = JobContext(output_dir=tmp_path / "run", epoch_observer=observer)
        with caplog.at_level(logging.WARNING):
            status, lines = exit_and_stderr(tiny_cfg(*overrides), ctx, capsys)
        last = ctx.output_dir / "checkpoints" / "last.pt"
        assert status == 1  # not a refusal (2)
        (line,) = lines
        assert line.startswith(
            f"error: the MLflow store sqlite:///{disk}/mlflow.db failed during the run "
            "(No space left on device"
        ), line
        assert line.endswith(
            f"; once that is fixed, resume the run: python scripts/train.py trainer.resume={last}"
        ), line
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        client = MlflowClient(f"sqlite:///{disk}/mlflow.db")
        (run,) = runs_in(client)
        assert run.info.status == "FAILED"

        (disk / "filler").unlink()
        resume = tiny_cfg(*overrides, f"trainer.resume={last}")
        run_training(resume, JobContext(output_dir=tmp_path))
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
        models = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert [model.status for model in models] == [LoggedModelStatus.READY] * log_model
        assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize(
    ("flags", "override", "refused"),
    [
        ([], "paths.outputs={disk}/outputs", "paths.outputs={disk}/outputs is on a full disk"),
        (["-m"], "paths.outputs={disk}/outputs", "paths.outputs={disk}/outputs is on a full disk"),
    ],
    ids=["outputs", "outputs of a sweep"],
)  # fmt: skip
def test_a_full_disk_is_refused_at_start_in_one_line_and_left_as_it_was(
    flags, override, refused, synthetic_root, tmp_path
):
    """A full outputs disk: Hydra's traceback and a stray directory (Hydra's callback
    refuses it, before a job runs: whole scripts)."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk)
        overrides = tiny_overrides(synthetic_root, tmp_path)
        result = run_train_script(*flags, *overrides, override.format(disk=disk))
        assert result.returncode == 2, result.stderr[-3000:]
        free = f"(0 KiB free at {disk}, a job needs {MIN_FREE_BYTES // 1024} KiB)"
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"error: {refused.format(disk=disk)} {free}; free some space"), line
        assert [path.name for path in disk.iterdir()] == ["filler"]
    assert not list((tmp_path / "outputs").rglob("*"))


def test_a_full_store_disk_is_refused_at_start_in_one_line_and_left_as_it_was(
    synthetic_root, tmp_path, capsys
):
    """Before: MLflow's traceback. In-process, as scripts/train.py runs the job: its exit 2
    and the discarded job directory are the script's for every refusal (test_config.py
    test_script_refuses_late_failures_before_any_side_effect)."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk)
        cfg = compose_config(
            [*tiny_overrides(synthetic_root, tmp_path), f"paths.mlruns={disk}/mlruns"]
        )
        status, lines = exit_and_stderr(
            cfg, JobContext(output_dir=tmp_path / "outputs" / "job"), capsys
        )
        assert status == 2
        free = f"(0 KiB free at {disk}, a job needs {MIN_FREE_BYTES // 1024} KiB)"
        refused = f"MLflow store sqlite:///{disk}/mlruns/mlflow.db is on a full disk"
        (line,) = lines
        assert line.startswith(f"error: {refused} {free}; free some space"), line
        assert [path.name for path in disk.iterdir()] == ["filler"]
    assert not list((tmp_path / "outputs").rglob("*"))
