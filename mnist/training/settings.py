"""How to train: the `trainer` config group, and what each of its values must be."""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from mnist.values import boolean_problems, is_finite, is_int, is_number


@dataclass(frozen=True)
class EarlyStopping:
    patience: int | None = None  # epochs without a gain of min_delta; None: never stop early
    min_delta: float = 0.0


@dataclass(frozen=True)
class Trainer:
    """conf/trainer/default.yaml says what each value does; these defaults train plainly."""

    epochs: int
    batch_size: int
    eval_batch_size: int = 256
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    early_stopping: EarlyStopping = EarlyStopping()
    precision: str = "fp32"
    deterministic: bool = False
    test_every_epoch: bool = False
    progress: bool = True
    target_acc: float | None = None
    ema_decay: float | None = None
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> "Trainer":
        values = {f.name: section[f.name] for f in fields(cls) if f.name in section}
        return cls(**values | {"early_stopping": EarlyStopping(**section["early_stopping"])})


def trainer_problems(trainer: Mapping[str, Any]) -> Iterator[str]:
    switches = ("deterministic", "test_every_epoch", "progress", "channels_last", "compile")
    yield from boolean_problems("trainer", trainer, switches)
    for key in ("epochs", "batch_size", "eval_batch_size"):
        value = trainer[key]
        if not is_int(value) or value < 1:
            yield f"trainer.{key}={value!r} must be an integer >= 1"
    smoothing = trainer["label_smoothing"]
    if not (is_number(smoothing) and 0 <= smoothing < 1):
        yield f"trainer.label_smoothing={smoothing!r} must be in [0, 1)"
    clip = trainer["grad_clip"]
    if clip is not None and not (is_finite(clip) and clip > 0):
        yield f"trainer.grad_clip={clip!r} must be > 0, or null to disable clipping"
    patience = trainer["early_stopping"]["patience"]
    if patience is not None and (not is_int(patience) or patience < 1):
        yield f"trainer.early_stopping.patience={patience!r} must be >= 1, or null to disable"
    min_delta = trainer["early_stopping"]["min_delta"]
    if not (is_finite(min_delta) and min_delta >= 0):
        yield f"trainer.early_stopping.min_delta={min_delta!r} must be >= 0"
    target = trainer["target_acc"]
    if target is not None and not (is_number(target) and 0 < target <= 1):
        yield f"trainer.target_acc={target!r} must be in (0, 1], or null to train all epochs"
    decay = trainer["ema_decay"]
    if decay is not None and not (is_number(decay) and 0 < decay < 1):
        yield f"trainer.ema_decay={decay!r} must be in (0, 1), or null to use the trained weights"
