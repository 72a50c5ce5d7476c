"""Resuming a run safely (issue 12): a FINISHED run is refused, one job per run at a time,
no leftovers of killed writes, a full disk named, and overrides that cannot apply named."""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import mnist.training.checkpoint as checkpoint_module
from mnist.context import JobContext
from mnist.errors import CheckpointWriteError, ConfigError
from mnist.tools.reproduce import compare_runs
from mnist.training.checkpoint import load_checkpoint, save_checkpoint
from mnist.training.job import run_training
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


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator[Path]:
    """A real 1 MB file system (tmpfs), mounted for the test: a disk that fills up."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


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
    with monkeypatch.context() as patch, pytest.raises(CheckpointWriteError, match="no space"):
        patch.setattr(checkpoint_module, "written_atomically", second_last_pt_fills_the_disk)
        run_training(tiny_cfg(), JobContext(output_dir=run_dir))
    client = store(tmp_path)
    (run,) = runs_in(client)
    assert run.info.status == "FAILED"
    last = run_dir / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["progress"]["epoch"] == 2  # epoch 1's, intact

    resumed = run_training(tiny_cfg(f"trainer.resume={last}"), JobContext(output_dir=tmp_path))
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    # Epoch 2 was logged before its last.pt failed, and trained again: logged once.
    assert_logged_once_per_step(client, run.info.run_id)
    reference = run_training(tiny_cfg(), JobContext(output_dir=tmp_path / "reference"))
    rows = compare_runs(client, reference["run_id"], resumed["run_id"])
    assert [row.name for row in rows if not row.matches(0)] == []
