"""JobContext: what Hydra knows about a job and its config does not. Shared by every
command that writes a run (training, evaluation, reproduction)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist.overrides import split_override, task_overrides

# Written into the sweep directory by the sweep's callback (mnist/sweeps/callback.py): a file
# reaches the jobs of every launcher, Slurm jobs on other nodes included (they share the
# sweep directory), where an environment variable may not.
PARENT_RUN_FILE = "mlflow_parent_run_id"
# The keys the sweep varies, one a line: each job's run is named by their values.
SWEPT_KEYS_FILE = "swept_keys"


def _sweep_file(hydra_cfg: Any, name: str) -> str | None:
    """The text of a file of the sweep directory; None outside a multirun, or when the
    sweep ran without the MlflowSweep callback."""
    from hydra.types import RunMode

    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    path = Path(hydra_cfg.sweep.dir) / name
    return path.read_text() if path.is_file() else None


def parent_run_id(hydra_cfg: Any) -> str | None:
    """The parent run of the sweep this job belongs to; None outside one."""
    text = _sweep_file(hydra_cfg, PARENT_RUN_FILE)
    return None if text is None else text.strip()


def swept_keys(hydra_cfg: Any) -> list[str]:
    """The keys the sweep of this job varies; empty outside a multirun."""
    return (_sweep_file(hydra_cfg, SWEPT_KEYS_FILE) or "").split()


@dataclass
class JobContext:
    """Where to write, how the job was asked for, and which option of each config group
    was chosen."""

    output_dir: Path
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    # Hydra's override_dirname: the overrides minus where-to-write keys, e.g. "model=cnn2,seed=1".
    override_dirname: str = ""
    # The MLflow run of the sweep this job is part of (mnist/sweeps/callback.py); None outside one.
    parent_run_id: str | None = None
    # The keys the sweep varies, in the order it gave them (e.g. ["model", "seed"]); empty
    # outside a sweep.
    swept_keys: list[str] = field(default_factory=list)
    # The job's number in its sweep (0 for a single run): what is said once per sweep is
    # said by job 0.
    job_num: int = 0
    # Added to the run's tags, e.g. the source run of a reproduction.
    extra_tags: dict[str, str] = field(default_factory=dict)
    # Sees each epoch's metrics after they are logged, with the epoch number; what it raises
    # stops the training (a tuning trial reports val/acc to its pruner: mnist/tuning/).
    epoch_observer: Callable[[dict[str, float], int], None] | None = None

    @classmethod
    def from_hydra(cls) -> JobContext:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        return cls(
            output_dir=Path(hydra.runtime.output_dir),
            overrides=task_overrides(hydra),
            choices={k: v for k, v in hydra.runtime.choices.items() if v is not None},
            override_dirname=hydra.job.override_dirname,
            parent_run_id=parent_run_id(hydra),
            swept_keys=swept_keys(hydra),
            job_num=hydra.job.num if hydra.mode == RunMode.MULTIRUN else 0,
        )

    @property
    def run_name(self) -> str:
        """In a sweep, what tells this job from the others: the values of the swept keys,
        a config group by its choice alone ("fast seed=0"; an augmentation by its ops); a
        single run by its overrides, else its model."""
        values = dict(map(split_override, self.overrides))
        swept = [
            self.choices.get(key, f"{key}={value}")
            for key in self.swept_keys
            if (value := values.get(key)) is not None
        ]
        return " ".join(swept) or self.override_dirname or self.choices.get("model", "run")
