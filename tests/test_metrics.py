import pytest
import torch

from mnist.reporting.metrics import classification_report, confusion_matrix, format_report


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 2, 0])
    matrix = confusion_matrix(preds, labels, num_classes=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_report_precision_recall_f1_support():
    matrix = confusion_matrix(torch.tensor([0, 1, 1, 2, 2, 0]), torch.tensor([0, 0, 1, 2, 2, 2]), 3)
    report = classification_report(matrix)
    zero = report["classes"]["0"]
    assert zero["precision"] == pytest.approx(1 / 2)
    assert zero["recall"] == pytest.approx(1 / 2)
    assert zero["support"] == 2
    two = report["classes"]["2"]
    assert two["precision"] == pytest.approx(1.0)
    assert two["recall"] == pytest.approx(2 / 3)
    assert two["f1"] == pytest.approx(0.8)
    assert report["accuracy"] == pytest.approx(4 / 6)


def test_absent_class_scores_zero_instead_of_failing():
    report = classification_report(confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0])))
    assert report["classes"]["7"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "macro avg" in format_report(report)
