"""JobContext: what Hydra knows about a job and its config does not."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist.overrides import split_override, task_overrides

# Written into the sweep directory by the sweep's callback (mnist/sweeps/callback.py): a file
# reaches the jobs of every launcher, Slurm jobs on other nodes included, where an
# environment variable may not. The second holds the keys the sweep varies, one a line.
PARENT_RUN_FILE = "mlflow_parent_run_id"
SWEPT_KEYS_FILE = "swept_keys"
FIRST_GROUPS = ("model", "augmentation")  # every run's name starts with their options


def _sweep_file(hydra_cfg: Any, name: str) -> str:
    """A file of the sweep directory; "" outside a multirun (whose sweep.dir would make a
    directory) or without the sweep callback."""
    from hydra.types import RunMode

    if hydra_cfg.mode != RunMode.MULTIRUN:
        return ""
    path = Path(hydra_cfg.sweep.dir) / name
    return path.read_text() if path.is_file() else ""


@dataclass
class JobContext:
    """Where to write, how the job was asked for, and which option of each group was chosen."""

    output_dir: Path
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    name_prefix: str = ""  # a tuning trial's number ("trial 3")
    parent_run_id: str | None = None  # the MLflow run of the sweep this job is part of
    swept_keys: list[str] = field(default_factory=list)  # in the order the sweep gave them
    job_num: int = 0  # in its sweep: what is said once per sweep is said by job 0
    extra_tags: dict[str, str] = field(default_factory=dict)
    # Sees each epoch's logged metrics; what it raises stops the training (a tuning trial
    # reports acc/val to its pruner).
    epoch_observer: Callable[[dict[str, float], int], None] | None = None

    @classmethod
    def from_hydra(cls) -> "JobContext":
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        return cls(
            output_dir=Path(hydra.runtime.output_dir),
            overrides=task_overrides(hydra),
            choices={k: v for k, v in hydra.runtime.choices.items() if v is not None},
            parent_run_id=_sweep_file(hydra, PARENT_RUN_FILE).strip() or None,
            swept_keys=_sweep_file(hydra, SWEPT_KEYS_FILE).split(),
            job_num=hydra.job.num if hydra.mode == RunMode.MULTIRUN else 0,
        )

    @property
    def run_name(self) -> str:
        """The model, its augmentation (unless none), then in a sweep the values of the keys
        it varies, alone its overrides that can change its numbers; numbers to 3 significant
        digits: "fast seed=0", "cnn4 affine(rot10,shift0.1) trainer.epochs=30"."""
        from mnist.tracking.params import changes_results

        values = dict(map(split_override, self.overrides))
        keys = self.swept_keys or [key for key in values if changes_results(key)]
        first = [self.choices.get(group) for group in FIRST_GROUPS]
        first = [option for option in first if option != "none"]
        rest = [
            self.choices.get(key) or f"{key}={_rounded(values[key])}"
            for key in keys
            if key not in FIRST_GROUPS and key in values
        ]
        return " ".join(word for word in [self.name_prefix, *first, *rest] if word) or "run"


def _rounded(value: str) -> str:
    """optimizer.lr=0.0031234 -> 0.00312; other values as given."""
    try:
        return f"{float(value):.3g}" if any(c in value for c in ".eE") else value
    except ValueError:
        return value
