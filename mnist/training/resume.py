"""Exact resume: `Progress` (where training stands) and `Learner` (everything training
changes) to one last.pt state and back."""

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from mnist.data.augment import BatchAugment
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
    """The module under a torch.compile wrapper: checkpoints hold its plain keys."""
    return getattr(model, "_orig_mod", model)


@dataclass
class Learner:
    """What training changes. A mid-epoch resume needs `shuffle` as it was when the epoch
    started, which the loop passes to `state`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule | None
    scaler: torch.amp.GradScaler
    augment: BatchAugment
    shuffle: torch.Generator
    ema: AveragedModel | None = None  # trainer.ema_decay

    @property
    def selected(self) -> nn.Module:
        """The weights that are validated and tested: the moving average if any."""
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
                # The global states of this machine's accelerators (GPU dropout draws there).
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,
            },
            "progress": asdict(progress),
            "device": str(next(self.model.parameters()).device),
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
        # Those whose device exists here: another machine may have had more GPUs.
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])
        if rng.get("mps") is not None and torch.backends.mps.is_available():
            torch.mps.set_rng_state(rng["mps"])
        saved_on, here = state.get("device"), next(self.model.parameters()).device
        if saved_on is not None and torch.device(saved_on).type != here.type:
            # Another device's augmentation generator state does not fit: it draws afresh.
            log.warning(
                "Resuming on %s a run that was training on %s: it goes on, but not "
                "bit-exactly as it would have on %s (other kernels, other random streams)",
                here, saved_on, saved_on,
            )  # fmt: skip
        elif self.augment.generator is not None:
            self.augment.generator.set_state(rng["augment"])
        return Progress(**state["progress"])
