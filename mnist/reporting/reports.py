"""The files that report on a model's test-set evaluation (training runs, scripts/evaluate.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mnist.reporting import plots
from mnist.reporting.metrics import classification_report, confusion_matrix, format_report
from mnist.training.evaluation import Evaluation

SAMPLE_GRID_SIZE = 32  # digits in a training run's misclassified and sample grids


def write_test_reports(
    output_dir: Path, images: torch.Tensor, labels: torch.Tensor, result: Evaluation, grid: int
) -> tuple[dict[str, Any], str, list[Path]]:
    """The per-class table, the confusion matrix and up to `grid` misclassified digits with
    their probabilities. Returns (report, its text table, files)."""
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
