"""The training loop, visible top to bottom: epochs of shuffled, augmented batches,
validation after each epoch, the best checkpoint chosen on validation accuracy only, the
last checkpoint every epoch, and early stopping."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from mnist.augment import BatchAugment
from mnist.checkpoint import save_checkpoint
from mnist.data import MnistTensors, batch_indices, normalize, to_unit_float
from mnist.device import autocast
from mnist.optim import Schedule

log = logging.getLogger(__name__)


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
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    train_time_s: float = 0.0
    stopped_early: bool = False


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


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
) -> FitResult:
    """Train for `cfg.epochs` (the `trainer` config group). Writes `best.pt` (weights of
    the best validation epoch) and `last.pt` (everything needed to resume) into
    `checkpoint_dir`; `checkpoint_extra` (the run's config) goes into both."""
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    val_images, val_labels = data.train_images[val_idx], data.train_labels[val_idx]
    patience, min_delta = cfg.early_stopping.patience, cfg.early_stopping.min_delta
    result = FitResult()
    best_for_patience, epochs_without_gain = -1.0, 0
    run_start = time.perf_counter()

    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        lr = _current_lr(optimizer)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        batches = batch_indices(train_idx, cfg.batch_size, shuffle, drop_last=True)
        steps = max(1, len(train_idx) // cfg.batch_size)
        bar = tqdm(
            batches,
            total=steps,
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=None if cfg.progress else True,
        )
        for idx in bar:
            images = normalize(augment(to_unit_float(data.train_images[idx])))
            labels = data.train_labels[idx]
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
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(idx)
        train_seconds = time.perf_counter() - epoch_start

        val = evaluate(model, val_images, val_labels, cfg.eval_batch_size, device, cfg.precision)
        if schedule and schedule.interval == "epoch":
            schedule.scheduler.step()
        elif schedule and schedule.interval == "plateau":
            schedule.scheduler.step(val.accuracy)
        metrics = {
            "train/loss": (loss_sum / seen).item(),
            "train/acc": (correct.double() / seen).item(),
            "val/loss": val.loss,
            "val/acc": val.accuracy,
            "lr": lr,
        }
        if cfg.test_every_epoch:
            test = evaluate(
                model,
                data.test_images,
                data.test_labels,
                cfg.eval_batch_size,
                device,
                cfg.precision,
            )
            metrics["test/acc_epoch"] = test.accuracy

        if val.accuracy > result.best_val_acc:
            result.best_val_acc, result.best_epoch = val.accuracy, epoch
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "epoch": epoch,
                    "val_acc": val.accuracy,
                    **checkpoint_extra,
                },
                checkpoint_dir / "best.pt",
            )
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.scheduler.state_dict() if schedule else None,
                "scaler": scaler.state_dict(),
                "shuffle_rng": shuffle.get_state(),
                "augment_rng": augment.generator.get_state() if augment.generator else None,
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch,
                "history": result.history,
                **checkpoint_extra,
            },
            checkpoint_dir / "last.pt",
        )
        metrics["epoch_time_s"] = time.perf_counter() - epoch_start
        metrics["throughput_img_s"] = seen / train_seconds
        log_metrics(metrics, epoch)
        result.history.append({"epoch": epoch, **metrics})
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs, %.0f img/s",
            epoch,
            cfg.epochs,
            metrics["train/loss"],
            metrics["train/acc"],
            val.loss,
            val.accuracy,
            metrics["epoch_time_s"],
            metrics["throughput_img_s"],
        )

        if val.accuracy >= best_for_patience + min_delta:
            best_for_patience, epochs_without_gain = val.accuracy, 0
        else:
            epochs_without_gain += 1
        if patience is not None and epochs_without_gain >= patience:
            log.info("Early stopping: no validation gain >= %g for %d epochs", min_delta, patience)
            result.stopped_early = True
            break

    result.train_time_s = time.perf_counter() - run_start
    return result
