"""What a training run reports as it goes, to whoever follows it: the core calls a
listener and imports no tracker; mnist/tracking/listener.py records the calls in MLflow,
a notebook may print them (docs/core.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class FitResult:
    """What `fit` ends with: each epoch's metrics, the best epoch and its accuracy."""

    history: list[dict[str, float]]
    best_epoch: int
    best_val_acc: float
    train_time_s: float
    stopped_early: bool


class RunListener:
    """`fit` calls on_start once (at epoch 1, or where a resumed run stands), on_epoch_end
    with each epoch's metrics, on_checkpoint after each file it writes, and on_end with
    its result. Each does nothing here: a listener overrides what it follows. What one
    raises stops the training (a tuning trial's pruner does)."""

    def on_start(self, epoch: int, step: int) -> None:
        pass

    def on_epoch_end(self, metrics: dict[str, float], epoch: int) -> None:
        pass

    def on_checkpoint(self, path: Path) -> None:
        pass

    def on_end(self, result: FitResult) -> None:
        pass
