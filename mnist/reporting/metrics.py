"""Classification metrics from predictions: confusion matrix and per-class report."""

from typing import Any

import torch
from torch import Tensor


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int = 10) -> Tensor:
    """Rows are true classes, columns predicted classes."""
    flat = labels.cpu().long() * num_classes + predictions.cpu().long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(matrix: Tensor) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, their macro average, and accuracy. A
    class never predicted (or never present) gets 0 rather than a division error (0/0)."""
    matrix = matrix.double()
    true_positive, predicted, support = matrix.diag(), matrix.sum(0), matrix.sum(1)
    precision = (true_positive / predicted).nan_to_num()
    recall = (true_positive / support).nan_to_num()
    scores = {"precision": precision, "recall": recall}
    scores["f1"] = (2 * precision * recall / (precision + recall)).nan_to_num()
    classes = {
        str(c): {**{key: score[c].item() for key, score in scores.items()}, "support": int(n)}
        for c, n in enumerate(support)
    }
    macro = {key: score.mean().item() for key, score in scores.items()}
    return {
        "classes": classes,
        "macro_avg": {**macro, "support": int(support.sum())},
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
