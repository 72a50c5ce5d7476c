import numpy as np
import pytest
import torch

from mnist.reporting.reports import classification_report, confusion_matrix, format_report


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


def test_report_agrees_with_scikit_learn_on_classes_never_predicted_or_never_present():
    """scikit-learn as the reference (it is not used at run time: importing sklearn.metrics
    takes seconds, on every training run); zero_division=0 is the report's rule."""
    from sklearn import metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, 500)  # 9 never present
    predictions = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 10, 500))
    predictions[predictions == 4] = 5  # 4 never predicted
    matrix = confusion_matrix(torch.from_numpy(predictions), torch.from_numpy(labels))
    expected = metrics.confusion_matrix(labels, predictions, labels=range(10))
    assert matrix.tolist() == expected.tolist()
    report = classification_report(matrix)
    scores = {"y_true": labels, "y_pred": predictions, "labels": range(10), "zero_division": 0}
    per_class = metrics.precision_recall_fscore_support(**scores)
    macro = metrics.precision_recall_fscore_support(**scores, average="macro")
    keys = ("precision", "recall", "f1", "support")
    for c, row in report["classes"].items():
        assert [row[k] for k in keys] == pytest.approx([v[int(c)] for v in per_class], abs=1e-12)
    assert [report["macro_avg"][k] for k in keys[:3]] == pytest.approx(macro[:3], abs=1e-12)
