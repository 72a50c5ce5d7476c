"""The names of a run's learning curves, and the names runs stored before them used.

MLflow's run page shows a section per metric prefix (the name before its last "/"), the
sections in alphabetical order, single values and curves alike, each chart named by what
follows the prefix. Named by quantity, the curves' sections come first (`acc`, `avg_loss`
sort before `best`, `test` and `time`, whose single values follow), each holding train
beside val. There is no other way to order that page: MLflow keeps its layout in the
browser only. Readers of stored runs map an old name with `current` (reproduce, a resumed
run); their own pages show them as they were logged."""

from __future__ import annotations

TRAIN_ACC = "acc/train"
VAL_ACC = "acc/val"
TRAIN_LOSS = "avg_loss/train"
VAL_LOSS = "avg_loss/val"

# The same curves as runs logged them until these names: split first, which sorted them
# after the single values and put train and val in sections of their own.
OLD_NAMES = {
    "train/acc": TRAIN_ACC,
    "val/acc": VAL_ACC,
    "train/loss": TRAIN_LOSS,
    "val/loss": VAL_LOSS,
}


def current(name: str) -> str:
    """A metric's name as runs log it now."""
    return OLD_NAMES.get(name, name)


def renamed(metrics: dict[str, float]) -> dict[str, float]:
    """An epoch's metrics (a stored history's row) under the current names."""
    return {current(name): value for name, value in metrics.items()}
