"""Exact resume. `Progress` is where training stands; `Learner` is everything training
changes (model, optimizer, schedule, gradient scaler, random generators) and turns that
into one last.pt state and back, so that a resumed run replays exactly what an
uninterrupted one would have done. `trainer.resume=<checkpoint path | MLflow run id>`
finds the last.pt of an interrupted run, so it continues in the same MLflow run."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from mnist.config import as_now, validate_config
from mnist.data.augment import BatchAugment
from mnist.errors import ConfigError
from mnist.overrides import override_key
from mnist.targets import first_line, refuse_unsafe_config
from mnist.training.checkpoint import load_checkpoint
from mnist.training.device import available
from mnist.training.optim import Schedule

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands, saved in last.pt."""

    epoch: int = 1  # the epoch in progress, 1-based
    step: int = 0  # batches of `epoch` already trained
    loss_sum: Tensor = field(default_factory=lambda: torch.zeros(()))
    correct: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    seen: int = 0
    epoch_train_s: float = 0.0  # training time of the epoch in progress, so far
    epoch_lr: float = 0.0  # learning rate when the epoch in progress started
    elapsed_s: float = 0.0  # wall time of fit() in earlier processes of this run
    best_val_acc: float = -1.0
    best_epoch: int = 0
    best_for_patience: float = -1.0
    epochs_without_gain: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def start_next_epoch(self) -> None:
        self.epoch, self.step, self.seen, self.epoch_train_s = self.epoch + 1, 0, 0, 0
        self.loss_sum.zero_()
        self.correct.zero_()


def eager(model: nn.Module) -> nn.Module:
    """The module itself under a torch.compile wrapper: checkpoints hold its plain keys."""
    return getattr(model, "_orig_mod", model)


@dataclass
class Learner:
    """What training changes. `shuffle` draws each epoch's order; a mid-epoch resume
    needs it as it was when that epoch started, which the loop passes to `state`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule | None
    scaler: torch.amp.GradScaler
    augment: BatchAugment
    shuffle: torch.Generator
    ema: AveragedModel | None = None  # trainer.ema_decay

    @property
    def selected(self) -> nn.Module:
        """The weights that are validated, checkpointed as best.pt and tested: the moving
        average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def state(self, progress: Progress, shuffle_state: Tensor) -> dict[str, Any]:
        return {
            "model": eager(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.scheduler.state_dict() if self.schedule else None,
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "rng": {
                "shuffle_epoch_start": shuffle_state,
                "augment": self.augment.generator.get_state() if self.augment.generator else None,
                "torch": torch.get_rng_state(),
                **_accelerator_rng_states(),
            },
            "progress": asdict(progress),
            "device": str(_device_of(self.model)),
        }

    def restore(self, state: dict[str, Any]) -> Progress:
        eager(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule:
            self.schedule.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        rng = state["rng"]
        self.shuffle.set_state(rng["shuffle_epoch_start"])
        torch.set_rng_state(rng["torch"])
        _restore_accelerator_rng_states(rng)
        saved_on, here = state.get("device"), _device_of(self.model)
        if saved_on is not None and torch.device(saved_on).type != here.type:
            # The augmentation generator lives on the device; another device's state does
            # not fit it, so it draws from the seed again.
            log.warning(
                "Resuming on %s a run that was training on %s: it goes on, but not "
                "bit-exactly as it would have on %s (other kernels, other random streams)",
                here, saved_on, saved_on,
            )  # fmt: skip
        elif self.augment.generator is not None:
            self.augment.generator.set_state(rng["augment"])
        return Progress(**state["progress"])


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _accelerator_rng_states() -> dict[str, Any]:
    """The global random states of the accelerators this machine has (dropout on a GPU
    draws from them)."""
    states: dict[str, Any] = {}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        states["mps"] = torch.mps.get_rng_state()
    return states


def _restore_accelerator_rng_states(rng: dict[str, Any]) -> None:
    """Those of the saved states whose device exists here; a checkpoint from another
    machine may name GPUs this one lacks."""
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])
    if rng.get("mps") is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(rng["mps"])


_RUN_ID = re.compile(r"[0-9a-f]{32}")


def _checkpoint_of_run(run_id: str, uri: str) -> Path:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as e:
        raise ConfigError(f"trainer.resume={run_id}: no such MLflow run in {uri}") from e
    output_dir = run.data.tags.get("output_dir")
    checkpoint = Path(output_dir) / "checkpoints" / "last.pt" if output_dir else None
    if checkpoint is None or not checkpoint.is_file():
        raise ConfigError(
            f"trainer.resume={run_id}: the run's last checkpoint is not on this machine "
            f"({checkpoint or 'no output_dir tag'}); pass its path as trainer.resume"
        )
    return checkpoint


def resume_checkpoint_path(target: str, uri: str) -> Path:
    """The last.pt that trainer.resume=<path | run id> names; ConfigError if there is none."""
    path = Path(target).expanduser()
    if path.is_file():
        return path
    if not _RUN_ID.fullmatch(target):
        raise ConfigError(
            f"trainer.resume={target!r} is neither a checkpoint file nor an MLflow run id"
        )
    return _checkpoint_of_run(target, uri)


def load_resume_checkpoint(target: str, path: Path) -> dict[str, Any]:
    """The contents of `path`; ConfigError (CheckpointError) if it cannot be resumed."""
    state = load_checkpoint(path, source=f"trainer.resume={target} ({path})")
    if not isinstance(state, dict) or "progress" not in state or "mlflow_run_id" not in state:
        raise ConfigError(
            f"trainer.resume={target}: {path} is not a resumable checkpoint "
            "(best.pt holds weights only; resume from last.pt)"
        )
    return state


def resume_config(state: dict[str, Any], path: Path, device: DictConfig) -> DictConfig:
    """The interrupted run's own config: refused if it names a `_target_` off the
    allowlist (anyone may hand over a last.pt), then validated like one from the command
    line, except for a device this machine lacks (a GPU run resumed on a laptop): `device`,
    the command line's `device` group, takes its place."""
    try:
        cfg = OmegaConf.create(state["config"])
        refuse_unsafe_config(cfg, str(path))
        cfg = as_now(cfg)
        if cfg.device.name in ("cuda", "mps") and not available(cfg.device.name):
            log.warning("The run trained with device=%s, which this machine lacks: resuming "
                        "with device=%s", cfg.device.name, device.name)  # fmt: skip
            cfg.device = device
        validate_config(cfg)
    except (OmegaConfBaseException, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path}: the checkpoint's config is incomplete or invalid ({first_line(e)})"
        ) from e
    return cfg


def refuse_finished_run(target: str, run_id: str, uri: str) -> None:
    """A FINISHED run has nothing left to do: resuming it would log its final metrics and
    model a second time. ConfigError for it, and for a run the store does not have."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        status = MlflowClient(uri).get_run(run_id).info.status
    except MlflowException as e:
        raise ConfigError(
            f"trainer.resume={target}: the checkpoint's MLflow run {run_id} is not in {uri}"
        ) from e
    if status == "FINISHED":
        raise ConfigError(
            f"trainer.resume={target}: run {run_id} is FINISHED, there is nothing to resume "
            f"(scripts/reproduce.py run_id={run_id} trains it again as a new run)"
        )


def ignored_overrides(given: DictConfig, resumed: DictConfig, overrides: list[str]) -> list[str]:
    """The command-line overrides whose values differ from the resumed run's own config,
    which is the one used: the user should hear that they do not apply."""
    ignored = []
    for override in overrides:
        key = override_key(override)
        # How this run was asked to resume, not a value of its config: not ignored.
        if key == "trainer.resume" or key.startswith("sweep."):
            continue
        now, then = (OmegaConf.select(c, key, default=None) for c in (given, resumed))
        if _plain(now) != _plain(then):
            ignored.append(override)
    return ignored


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
