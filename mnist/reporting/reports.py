"""A model's test-set evaluation as files (training runs, scripts/evaluate.py): per-class
metrics, the confusion matrix, misclassified digits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mnist.reporting import plots
from mnist.training.evaluation import Evaluation

SAMPLE_GRID_SIZE = 32  # digits in a training run's misclassified and sample grids


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


def write_test_reports(
    output_dir: Path, images: torch.Tensor, labels: torch.Tensor, result: Evaluation, grid: int
) -> tuple[dict[str, Any], str, list[Path]]:
    """Per-class table, confusion matrix, `grid` misclassified digits: (report, table, files)."""
    matrix = confusion_matrix(result.predictions, labels)
    report = classification_report(matrix)
    table = format_report(report)
    report_path = output_dir / "classification_report.txt"
    report_path.write_text(table)
    paths = [report_path, plots.plot_confusion_matrix(matrix, output_dir / "confusion_matrix.png")]
    wrong = plots.plot_misclassified(
        images, labels, result.predictions, result.probabilities,
        output_dir / "misclassified.png", grid,
    )  # fmt: skip
    if wrong:
        paths.append(wrong)
    return report, table, paths


def write_training_reports(
    output_dir: Path, images: torch.Tensor, labels: torch.Tensor, test: Evaluation,
    history: Sequence[dict[str, float]],
) -> list[Path]:  # fmt: skip
    """The test reports, the learning curves and the first test digits' predictions."""
    _, _, paths = write_test_reports(output_dir, images, labels, test, SAMPLE_GRID_SIZE)
    n = min(SAMPLE_GRID_SIZE, len(labels))
    sample = plots.plot_predictions(
        images[:n].float() / 255, labels[:n], test.predictions[:n], test.probabilities[:n],
        output_dir / "sample_predictions.png", "first test digits",
    )  # fmt: skip
    return [*paths, plots.plot_training_curves(history, output_dir / "training_curves.png"), sample]
