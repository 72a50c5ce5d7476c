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
# The config groups every run's name starts with, by their options (JobContext.run_name).
FIRST_GROUPS = ("model", "augmentation")


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
    # Said before the run's name: a tuning trial's number ("trial 3").
    name_prefix: str = ""
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
    # stops the training (a tuning trial reports acc/val to its pruner: mnist/tuning/).
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
            parent_run_id=parent_run_id(hydra),
            swept_keys=swept_keys(hydra),
            job_num=hydra.job.num if hydra.mode == RunMode.MULTIRUN else 0,
        )

    @property
    def run_name(self) -> str:
        """One naming for single runs and a sweep's jobs: the model, its augmentation
        (unless none), then what else tells the run apart: in a sweep the values of the keys
        it varies, alone its overrides that can change its numbers (where it wrote left
        out). A config group by its option alone, numbers to 3 significant digits (the
        exact values are the run's params): "fast seed=0", "cnn4 affine(rot10,shift0.1)
        trainer.epochs=30"."""
        from mnist.tracking.params import changes_results

        values = dict(map(split_override, self.overrides))
        keys = self.swept_keys or [key for key in values if changes_results(key)]
        # No augmentation goes without saying.
        first = [self.choices.get(group) for group in FIRST_GROUPS]
        first = [option for option in first if option != "none"]
        rest = [
            self.choices.get(key) or f"{key}={_rounded(values[key])}"
            for key in keys
            if key not in FIRST_GROUPS and key in values
        ]
        return " ".join(word for word in [self.name_prefix, *first, *rest] if word) or "run"


def _rounded(value: str) -> str:
    """optimizer.lr=0.0031234 -> 0.00312: a name stays readable; other values as given."""
    try:
        return f"{float(value):.3g}" if any(c in value for c in ".eE") else value
    except ValueError:
        return value
