"""One trial = one training job, a child of the study's MLflow run, pruned on its validation
accuracy; the objective is its best validation accuracy (the test set chooses nothing)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from mnist.context import JobContext
from mnist.errors import ConfigError, DataError, TrackingError
from mnist.metric_names import VAL_ACC
from mnist.overrides import override_key
from mnist.tuning.space import Param, trial_overrides

log = logging.getLogger(__name__)

# run_training(cfg, ctx) -> final metrics, passed in by scripts/tune.py.
TrainFn = Callable[[DictConfig, JobContext], dict[str, Any]]
# Overrides of the trial -> (its training config, the option chosen in each config group).
ComposeFn = Callable[[list[str]], tuple[DictConfig, dict[str, str]]]


class PrunedTrial(optuna.TrialPruned, KeyboardInterrupt):
    """Optuna records it PRUNED; as a KeyboardInterrupt it ends the MLflow run KILLED."""


class TrialFailed(Exception):
    """Recorded FAIL, and the search goes on (a user error is not wrapped: it stops it)."""


class TrialInterrupted(BaseException):
    """A signal stopped the trial: not an Exception nor a KeyboardInterrupt, which Optuna
    would log with a 17-line traceback."""


@dataclass
class Objective:
    train: TrainFn
    compose: ComposeFn
    space: list[Param]
    base_overrides: list[str]
    trials_dir: Path
    parent_run_id: str

    def __call__(self, trial: optuna.Trial) -> float:
        overrides = trial_overrides(self.space, trial)
        cfg, choices = self.compose(overrides)
        trial.set_user_attr("epochs", cfg.trainer.epochs)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        log.info("Trial %d: %s", trial.number, " ".join(overrides))
        ctx = JobContext(
            output_dir=self.trials_dir / f"trial_{trial.number:04d}",
            overrides=[*self.base_overrides, *overrides],
            choices=choices,
            # Named by what was sampled: "trial 3 fast optimizer.lr=0.00312".
            name_prefix=f"trial {trial.number}",
            swept_keys=[override_key(override) for override in overrides],
            parent_run_id=self.parent_run_id,
            extra_tags={"optuna.study": trial.study.study_name,
                        "optuna.trial": str(trial.number), "optuna.state": "RUNNING"},
            epoch_observer=_observer(trial, cfg.trainer.epochs),
        )  # fmt: skip
        try:
            return self.train(cfg, ctx)["best/val_acc"]
        except PrunedTrial:
            raise
        except KeyboardInterrupt as e:
            # SIGINT/SIGTERM: queued again, as the heartbeat does for a dead process's trial.
            failed = trial.study.tell(trial, state=TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback()(trial.study, failed)
            log.warning("Trial %d interrupted; it runs again first when the study goes on",
                        trial.number)  # fmt: skip
            raise TrialInterrupted from e
        except (ConfigError, DataError, TrackingError):
            raise
        except Exception as e:
            raise TrialFailed(f"trial {trial.number} failed: {e!r}") from e


def _observer(trial: optuna.Trial, epochs: int) -> Callable[[dict[str, float], int], None]:
    epoch_times: list[float] = []

    def observe(metrics: dict[str, float], epoch: int) -> None:
        epoch_times.append(metrics["epoch_time_s"])
        trial.set_user_attr("epoch_times_s", epoch_times)
        trial.report(metrics[VAL_ACC], epoch)
        if epoch < epochs and trial.should_prune():
            raise PrunedTrial(f"{VAL_ACC} {metrics[VAL_ACC]:.4f} at epoch {epoch}/{epochs}")

    return observe
