"""What `fit` reports as it goes: the core calls a listener and imports no tracker
(mnist/tracking/listener.py records the calls in MLflow)."""

from dataclasses import dataclass
from pathlib import Path


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_val_acc: float
    train_time_s: float
    stopped_early: bool


class RunListener:
    """Each call does nothing here; a listener overrides what it follows. What one raises
    stops the training (a tuning trial's pruner does)."""

    def on_start(self, epoch: int, step: int) -> None:
        pass

    def on_epoch_end(self, metrics: dict[str, float], epoch: int) -> None:
        pass

    def on_checkpoint(self, path: Path) -> None:
        pass

    def on_end(self, result: FitResult) -> None:
        pass
