"""Classification metrics from predictions: confusion matrix and per-class report."""

from typing import Any

import torch
from torch import Tensor


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int = 10) -> Tensor:
    """Rows are true classes, columns predicted classes."""
    flat = labels.cpu().long() * num_classes + predictions.cpu().long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(matrix: Tensor) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, their macro average, and accuracy.
    A class never predicted (or never present) gets 0 rather than a division error."""
    matrix = matrix.double()
    true_positive = matrix.diag()
    predicted = matrix.sum(0)
    support = matrix.sum(1)
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_positive / support.clamp(min=1), 0.0)
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
    classes = {
        str(c): {
            "precision": precision[c].item(),
            "recall": recall[c].item(),
            "f1": f1[c].item(),
            "support": int(support[c].item()),
        }
        for c in range(len(matrix))
    }
    return {
        "classes": classes,
        "macro_avg": {
            "precision": precision.mean().item(),
            "recall": recall.mean().item(),
            "f1": f1.mean().item(),
            "support": int(support.sum().item()),
        },
        "accuracy": (true_positive.sum() / matrix.sum().clamp(min=1)).item(),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'class':>9} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    rows = [*report["classes"].items(), ("macro avg", report["macro_avg"])]
    for name, row in rows:
        lines.append(
            f"{name:>9} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} "
            f"{row['support']:9d}"
        )
    lines.append(f"{'accuracy':>9} {report['accuracy']:9.4f}")
    return "\n".join(lines) + "\n"
