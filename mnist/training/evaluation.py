"""Evaluation of a model on uint8 images, for validation, tests and scripts/evaluate.py."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mnist.data.batches import normalize, to_unit_float
from mnist.training.device import autocast


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: Tensor  # (N,) predicted digits
    probabilities: Tensor  # (N, 10) softmax outputs


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Divided in Python: MPS has no float64, and a float32 mean would round the count."""
    return (predictions == labels).sum().item() / len(labels)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> Evaluation:
    """Mean cross-entropy (without label smoothing) and accuracy."""
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
        accuracy=accuracy(predictions, labels),
        predictions=predictions,
        probabilities=probs,
    )
