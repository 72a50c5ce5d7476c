"""The training loop: the best checkpoint is chosen on validation accuracy only, and a
SIGINT/SIGTERM stops after the current step with a last.pt that resumes exactly there."""

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from mnist.data.batches import training_batches
from mnist.data.tensors import MnistTensors
from mnist.errors import TrainingDiverged, TrainingInterrupted
from mnist.metric_names import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from mnist.training.checkpoint import load_checkpoint, save_checkpoint, state_dict_sha256
from mnist.training.device import autocast, synchronize
from mnist.training.evaluation import Evaluation, evaluate
from mnist.training.events import FitResult, RunListener
from mnist.training.resume import Learner, Progress, eager
from mnist.training.settings import Trainer
from mnist.training.signals import StopRequested, stop_on_signals

log = logging.getLogger(__name__)


@dataclass
class Checkpoints:
    """best.pt and last.pt in `directory`, both with `extra` (a job's config and run id)."""

    directory: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, name: str, state: dict[str, Any]) -> Path:
        return save_checkpoint({**state, **self.extra}, self.directory / name)


def fit(
    learner: Learner,
    data: MnistTensors,
    train_idx: Tensor,
    val_idx: Tensor,
    trainer: Trainer,
    device: torch.device,
    checkpoints: Checkpoints,
    listener: RunListener | None = None,
    resume_from: dict[str, Any] | None = None,
) -> FitResult:
    """Train for `trainer.epochs`, or what remains of them after the last.pt `resume_from`."""
    listener = listener or RunListener()
    progress = learner.restore(resume_from) if resume_from is not None else Progress()
    if resume_from is not None:
        log.info("Resuming at epoch %d, step %d", progress.epoch, progress.step)
    listener.on_start(progress.epoch, progress.step)
    progress.loss_sum, progress.correct = progress.loss_sum.to(device), progress.correct.to(device)
    fit_start = time.perf_counter() - progress.elapsed_s

    def save_last(shuffle_state: Tensor) -> Path:
        progress.elapsed_s = time.perf_counter() - fit_start
        path = checkpoints.save("last.pt", learner.state(progress, shuffle_state))
        listener.on_checkpoint(path)
        return path

    with stop_on_signals() as stop_requested:
        while progress.epoch <= trainer.epochs and not progress.stopped_early:
            epoch_start = time.perf_counter() - progress.epoch_train_s
            shuffle_state = learner.shuffle.get_state()
            if not train_one_epoch(
                learner, data, train_idx, trainer, device, progress, stop_requested
            ):
                progress.epoch_train_s = time.perf_counter() - epoch_start
                raise TrainingInterrupted(save_last(shuffle_state), stop_requested())
            synchronize(device)  # the epoch's queued steps are training time, not validation
            train_seconds = time.perf_counter() - epoch_start
            metrics = end_of_epoch(
                learner, data, val_idx, trainer, device, progress, checkpoints, fit_start
            )
            if progress.best_epoch == progress.epoch:
                listener.on_checkpoint(checkpoints.directory / "best.pt")
            metrics["epoch_time_s"] = time.perf_counter() - epoch_start
            metrics["throughput_img_s"] = progress.seen / train_seconds
            _record(metrics, progress, trainer.epochs, listener)
            progress.start_next_epoch()
            last = save_last(learner.shuffle.get_state())
            signum = stop_requested()
            if signum and progress.epoch <= trainer.epochs and not progress.stopped_early:
                raise TrainingInterrupted(last, signum)

    result = FitResult(
        history=progress.history,
        best_epoch=progress.best_epoch,
        best_val_acc=progress.best_val_acc,
        train_time_s=time.perf_counter() - fit_start,
        stopped_early=progress.stopped_early,
    )
    listener.on_end(result)
    return result


def test_best(
    model: nn.Module,
    data: MnistTensors,
    checkpoints: Checkpoints,
    result: FitResult,
    trainer: Trainer,
    device: torch.device,
) -> tuple[Evaluation, dict[str, float], str]:
    """The best-validation weights loaded into `model` and tested: the evaluation, the run's
    final metrics and the weights' state_dict_sha256."""
    best = load_checkpoint(checkpoints.directory / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    synchronize(device)  # evaluate() ends in .item(), which waits for its own work
    test_start = time.perf_counter()
    test = _evaluate(model, data.test_images, data.test_labels, trainer, device)
    return (
        test,
        {
            "test/acc": test.accuracy,
            "test/loss": test.loss,
            "test/eval_time_s": time.perf_counter() - test_start,
            "best/val_acc": result.best_val_acc,
            "best/epoch": result.best_epoch,
            "train_time_s": result.train_time_s,
        },
        state_dict_sha256(best["model"]),
    )


def train_one_epoch(
    learner: Learner,
    data: MnistTensors,
    train_idx: Tensor,
    trainer: Trainer,
    device: torch.device,
    progress: Progress,
    stop_requested: StopRequested,
) -> bool:
    """The batches of `progress.epoch` from `progress.step` on; False when stopped."""
    if progress.step == 0:
        progress.epoch_lr = learner.optimizer.param_groups[0]["lr"]
    batches = training_batches(
        data.train_images, data.train_labels, train_idx, trainer.batch_size, learner.shuffle,
        learner.augment, skip=progress.step,
    )  # fmt: skip
    learner.model.train()
    bar = tqdm(
        batches, total=max(1, len(train_idx) // trainer.batch_size), initial=progress.step,
        leave=False, desc=f"epoch {progress.epoch}/{trainer.epochs}",
        disable=None if trainer.progress else True,
    )  # fmt: skip
    for step, (images, labels) in enumerate(bar, start=progress.step):
        loss, logits = train_step(learner, images, labels, trainer, device)
        progress.loss_sum += loss.detach() * len(labels)
        progress.correct += (logits.argmax(1) == labels).sum()
        progress.seen += len(labels)
        progress.step = step + 1
        if stop_requested():
            return False
    bar.close()
    return True


def train_step(
    learner: Learner, images: Tensor, labels: Tensor, trainer: Trainer, device: torch.device
) -> tuple[Tensor, Tensor]:
    """One optimisation step (the benchmark times this same one): the loss and logits."""
    model, optimizer, scaler = learner.model, learner.optimizer, learner.scaler
    with autocast(device, trainer.precision):
        logits = model(images).float()
    loss = F.cross_entropy(logits, labels, label_smoothing=trainer.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if trainer.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if learner.schedule and learner.schedule.interval == "step":
        learner.schedule.scheduler.step()
    if learner.ema is not None:
        learner.ema.update_parameters(eager(model))
    return loss, logits


def end_of_epoch(
    learner: Learner,
    data: MnistTensors,
    val_idx: Tensor,
    trainer: Trainer,
    device: torch.device,
    progress: Progress,
    checkpoints: Checkpoints,
    fit_start: float,
) -> dict[str, float]:
    """Validate, step an epoch-wise schedule, keep the best checkpoint and decide early
    stopping (or stopping at trainer.target_acc); the epoch's metrics."""
    model, schedule = learner.selected, learner.schedule
    train_loss = (progress.loss_sum / progress.seen).item()
    if not math.isfinite(train_loss):  # before best.pt could keep the broken weights
        weight_decay = learner.optimizer.param_groups[0].get("weight_decay", 0)
        raise TrainingDiverged(
            f"training diverged: {TRAIN_LOSS} is {train_loss} in epoch {progress.epoch} "
            f"(learning rate {progress.epoch_lr:g}, weight decay {weight_decay:g}); lower "
            "optimizer.lr or optimizer.weight_decay, or set trainer.grad_clip"
        )
    val_images, val_labels = data.train_images[val_idx], data.train_labels[val_idx]
    val = _evaluate(model, val_images, val_labels, trainer, device)
    if schedule and schedule.interval == "epoch":
        schedule.scheduler.step()
    elif schedule and schedule.interval == "plateau":
        schedule.scheduler.step(val.accuracy)
    metrics = {
        TRAIN_LOSS: train_loss,
        TRAIN_ACC: progress.correct.item() / progress.seen,  # no float64: MPS has none
        VAL_LOSS: val.loss,
        VAL_ACC: val.accuracy,
        "lr": progress.epoch_lr,
    }
    if trainer.test_every_epoch:
        test = _evaluate(model, data.test_images, data.test_labels, trainer, device)
        metrics["test/acc_epoch"] = test.accuracy
    if val.accuracy > progress.best_val_acc:
        progress.best_val_acc, progress.best_epoch = val.accuracy, progress.epoch
        best = {"model": eager(model).state_dict(), "epoch": progress.epoch}
        checkpoints.save("best.pt", best | {"val_acc": val.accuracy})
    min_delta, patience = trainer.early_stopping.min_delta, trainer.early_stopping.patience
    if val.accuracy >= progress.best_for_patience + min_delta:
        progress.best_for_patience, progress.epochs_without_gain = val.accuracy, 0
    else:
        progress.epochs_without_gain += 1
    if patience is not None and progress.epochs_without_gain >= patience:
        log.info("Early stopping: no validation accuracy gain >= %g for %d epochs", min_delta,
                 patience)  # fmt: skip
        progress.stopped_early = True
    if trainer.target_acc is not None and val.accuracy >= trainer.target_acc:
        metrics["time_to_target_s"] = seconds = time.perf_counter() - fit_start
        log.info("Target validation accuracy %g reached in %.1f s", trainer.target_acc, seconds)
        progress.stopped_early = True
    return metrics


def _evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, trainer: Trainer, device: torch.device
) -> Evaluation:
    return evaluate(model, images, labels, trainer.eval_batch_size, device, trainer.precision)


def _record(
    metrics: dict[str, float], progress: Progress, epochs: int, listener: RunListener
) -> None:
    listener.on_epoch_end(metrics, progress.epoch)
    progress.history.append({"epoch": progress.epoch, **metrics})
    log.info(
        "epoch %d/%d train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs %.0f img/s",
        progress.epoch, epochs, metrics[TRAIN_LOSS], metrics[TRAIN_ACC],
        metrics[VAL_LOSS], metrics[VAL_ACC], metrics["epoch_time_s"],
        metrics["throughput_img_s"],
    )  # fmt: skip
