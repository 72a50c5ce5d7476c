"""The directory Hydra makes for a job before it runs (`.hydra/`, the log file): it goes when
a refused job wrote nothing else, or when a resumed run logs into its own directory."""

import logging
import shutil
from pathlib import Path

HYDRA_RECORD = ("config.yaml", "hydra.yaml", "overrides.yaml")


def _hydra_job() -> tuple[Path, set[Path]] | None:
    """(the job's output directory, the files Hydra wrote there); None outside a Hydra job
    or where it keeps no record (hydra.output_subdir=null)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.output_subdir is None:
        return None
    directory = Path(hydra.runtime.output_dir)
    written = {directory / hydra.output_subdir / name for name in HYDRA_RECORD}
    return directory, written | {directory / f"{hydra.job.name}.log"}


def discard_job_dir(outputs: str | Path | None) -> None:
    """Remove the job's output directory if it holds only what Hydra wrote, and the parents
    that leaves empty below `outputs` (paths.outputs)."""
    job = _hydra_job()
    if job is None or not job[0].is_dir():
        return
    directory, written = job
    for path in directory.rglob("*"):
        if path.is_symlink() or (not path.is_dir() and path not in written):
            return
    shutil.rmtree(directory)
    top = Path(outputs).resolve() if outputs else None
    for parent in directory.parents:
        if top is None or top not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:  # not empty: other runs are in it
            break


def continue_log_in(run_dir: Path, outputs: str | Path) -> None:
    """Append the job's log to the one in `run_dir` (a resumed run's own) and discard the
    directory Hydra made for this job."""
    job = _hydra_job()
    if job is None or job[0].resolve() == run_dir.resolve():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) in job[1]:
            moved = logging.FileHandler(run_dir / Path(handler.baseFilename).name, mode="a")
            moved.setLevel(handler.level)
            moved.setFormatter(handler.formatter)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(moved)
    discard_job_dir(outputs)
