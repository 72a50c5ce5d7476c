"""The training loop, visible top to bottom: epochs of shuffled, augmented batches,
validation after each epoch, the best checkpoint chosen on validation accuracy only, the
last checkpoint every epoch, early stopping, and a clean stop on SIGINT/SIGTERM that
leaves a checkpoint from which the run resumes exactly where it stopped."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from mnist.augment import BatchAugment
from mnist.checkpoint import save_checkpoint
from mnist.data import MnistTensors, normalize, to_unit_float, training_batches
from mnist.device import autocast
from mnist.optim import Schedule

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a resumable checkpoint. A
    KeyboardInterrupt, so the MLflow run is closed as KILLED, not FAILED."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"training interrupted; resume with trainer.resume={checkpoint}")
        self.checkpoint = checkpoint


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: Tensor  # (N,) predicted digits
    probabilities: Tensor  # (N, 10) softmax outputs


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> Evaluation:
    """Mean cross-entropy (without label smoothing) and accuracy over uint8 `images`."""
    model.eval()
    losses, probabilities = [], []
    for start in range(0, len(images), batch_size):
        batch = normalize(to_unit_float(images[start : start + batch_size]))
        with autocast(device, precision):
            logits = model(batch).float()
        target = labels[start : start + batch_size]
        losses.append(F.cross_entropy(logits, target, reduction="sum"))
        probabilities.append(logits.softmax(1))
    probs = torch.cat(probabilities)
    predictions = probs.argmax(1)
    return Evaluation(
        loss=(torch.stack(losses).sum() / len(images)).item(),
        accuracy=(predictions == labels).double().mean().item(),
        predictions=predictions,
        probabilities=probs,
    )


@dataclass
class Progress:
    """Where training stands. Saved in last.pt with the model, optimizer and RNG states, so
    that a resumed run replays exactly what an uninterrupted one would have done."""

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


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_val_acc: float
    train_time_s: float
    stopped_early: bool


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Turn the first SIGINT/SIGTERM into a request the loop honours after the current
    step; a second one gets the default behaviour (immediate stop)."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False  # signal handlers can only be installed in the main thread
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum, frame):
        log.warning("%s received: stopping after the current step", signal.Signals(signum).name)
        requested.append(signum)
        signal.signal(signum, previous[signum])

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield lambda: bool(requested)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _eager(model: nn.Module) -> nn.Module:
    """The module itself under a torch.compile wrapper: checkpoints hold its plain keys."""
    return getattr(model, "_orig_mod", model)


def _resumable_state(model, optimizer, schedule, scaler, augment, shuffle_state, progress):
    return {
        "model": _eager(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.scheduler.state_dict() if schedule else None,
        "scaler": scaler.state_dict(),
        "rng": {
            # The shuffle generator as it was when the epoch in progress drew its order.
            "shuffle_epoch_start": shuffle_state,
            "augment": augment.generator.get_state() if augment.generator else None,
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "progress": asdict(progress),
    }


def _restore(state, model, optimizer, schedule, scaler, augment, shuffle) -> Progress:
    _eager(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if schedule:
        schedule.scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    shuffle.set_state(rng["shuffle_epoch_start"])
    if augment.generator is not None:
        augment.generator.set_state(rng["augment"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    return Progress(**state["progress"])


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule | None,
    data: MnistTensors,
    train_idx: Tensor,
    val_idx: Tensor,
    cfg: DictConfig,
    augment: BatchAugment,
    shuffle: torch.Generator,
    device: torch.device,
    checkpoint_dir: Path,
    checkpoint_extra: dict[str, Any],
    log_metrics: Callable[[dict[str, float], int], None],
    resume_from: dict[str, Any] | None = None,
) -> FitResult:
    """Train for `cfg.epochs` (the `trainer` config group), or what remains of them when
    `resume_from` holds a last.pt. Writes `best.pt` (weights of the best validation epoch)
    and `last.pt` (everything needed to resume) into `checkpoint_dir`; `checkpoint_extra`
    (the run's config and MLflow run id) goes into both."""
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    val_images, val_labels = data.train_images[val_idx], data.train_labels[val_idx]
    patience, min_delta = cfg.early_stopping.patience, cfg.early_stopping.min_delta
    steps_per_epoch = max(1, len(train_idx) // cfg.batch_size)
    progress = Progress()
    if resume_from is not None:
        progress = _restore(resume_from, model, optimizer, schedule, scaler, augment, shuffle)
        log.info("Resuming at epoch %d, step %d", progress.epoch, progress.step)
    progress.loss_sum, progress.correct = progress.loss_sum.to(device), progress.correct.to(device)
    fit_start = time.perf_counter() - progress.elapsed_s

    def save_last(shuffle_state: Tensor) -> Path:
        progress.elapsed_s = time.perf_counter() - fit_start
        state = _resumable_state(
            model, optimizer, schedule, scaler, augment, shuffle_state, progress
        )
        return save_checkpoint({**state, **checkpoint_extra}, checkpoint_dir / "last.pt")

    with stop_on_signals() as stop_requested:
        while progress.epoch <= cfg.epochs and not progress.stopped_early:
            epoch = progress.epoch
            epoch_start = time.perf_counter() - progress.epoch_train_s
            if progress.step == 0:
                progress.epoch_lr = optimizer.param_groups[0]["lr"]
            shuffle_state = shuffle.get_state()
            # Batches before progress.step were trained before the interruption resumed from.
            batches = training_batches(
                data.train_images, data.train_labels, train_idx, cfg.batch_size, shuffle,
                augment, skip=progress.step,
            )  # fmt: skip
            model.train()
            bar = tqdm(
                batches, total=steps_per_epoch, initial=progress.step, leave=False,
                desc=f"epoch {epoch}/{cfg.epochs}", disable=None if cfg.progress else True,
            )  # fmt: skip
            for step, (images, labels) in enumerate(bar, start=progress.step):
                with autocast(device, cfg.precision):
                    logits = model(images).float()
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if schedule and schedule.interval == "step":
                    schedule.scheduler.step()
                progress.loss_sum += loss.detach() * len(labels)
                progress.correct += (logits.argmax(1) == labels).sum()
                progress.seen += len(labels)
                progress.step = step + 1
                if stop_requested():
                    progress.epoch_train_s = time.perf_counter() - epoch_start
                    raise TrainingInterrupted(save_last(shuffle_state))
            bar.close()
            train_seconds = time.perf_counter() - epoch_start

            val = evaluate(
                model, val_images, val_labels, cfg.eval_batch_size, device, cfg.precision
            )
            if schedule and schedule.interval == "epoch":
                schedule.scheduler.step()
            elif schedule and schedule.interval == "plateau":
                schedule.scheduler.step(val.accuracy)
            metrics = {
                "train/loss": (progress.loss_sum / progress.seen).item(),
                "train/acc": (progress.correct.double() / progress.seen).item(),
                "val/loss": val.loss,
                "val/acc": val.accuracy,
                "lr": progress.epoch_lr,
            }
            if cfg.test_every_epoch:
                test = evaluate(
                    model, data.test_images, data.test_labels, cfg.eval_batch_size, device,
                    cfg.precision,
                )  # fmt: skip
                metrics["test/acc_epoch"] = test.accuracy
            if val.accuracy > progress.best_val_acc:
                progress.best_val_acc, progress.best_epoch = val.accuracy, epoch
                best = {
                    "model": _eager(model).state_dict(),
                    "epoch": epoch,
                    "val_acc": val.accuracy,
                }
                save_checkpoint({**best, **checkpoint_extra}, checkpoint_dir / "best.pt")
            if val.accuracy >= progress.best_for_patience + min_delta:
                progress.best_for_patience, progress.epochs_without_gain = val.accuracy, 0
            else:
                progress.epochs_without_gain += 1
            if patience is not None and progress.epochs_without_gain >= patience:
                log.info("Early stopping: no val/acc gain >= %g for %d epochs", min_delta, patience)
                progress.stopped_early = True
            if cfg.target_acc is not None and val.accuracy >= cfg.target_acc:
                metrics["time_to_target_s"] = time.perf_counter() - fit_start
                log.info("Target val/acc %g reached in %.1f s", cfg.target_acc,
                         metrics["time_to_target_s"])  # fmt: skip
                progress.stopped_early = True
            metrics["epoch_time_s"] = time.perf_counter() - epoch_start
            metrics["throughput_img_s"] = progress.seen / train_seconds
            log_metrics(metrics, epoch)
            progress.history.append({"epoch": epoch, **metrics})
            log.info(
                "epoch %d/%d train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs %.0f img/s",
                epoch, cfg.epochs, metrics["train/loss"], metrics["train/acc"], val.loss,
                val.accuracy, metrics["epoch_time_s"], metrics["throughput_img_s"],
            )  # fmt: skip

            progress.epoch, progress.step, progress.seen, progress.epoch_train_s = (
                epoch + 1,
                0,
                0,
                0,
            )
            progress.loss_sum.zero_()
            progress.correct.zero_()
            last = save_last(shuffle.get_state())
            if stop_requested() and progress.epoch <= cfg.epochs and not progress.stopped_early:
                raise TrainingInterrupted(last)

    return FitResult(
        history=progress.history,
        best_epoch=progress.best_epoch,
        best_val_acc=progress.best_val_acc,
        train_time_s=time.perf_counter() - fit_start,
        stopped_early=progress.stopped_early,
    )
