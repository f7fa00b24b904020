"""Metrics against values worked out by hand."""
import numpy as np
import pytest

from finetune.metrics import accuracy, classification_metrics, confusion_matrix, macro_f1, per_class


def test_confusion_rows_true_columns_predicted():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_hand_computed_example():
    # true 0 0 1 2 2 2 / pred 0 1 1 2 2 0
    # class 0: tp 1, predicted 2, actual 2 -> P 1/2, R 1/2, F1 1/2
    # class 1: tp 1, predicted 2, actual 1 -> P 1/2, R 1,   F1 2/3
    # class 2: tp 2, predicted 2, actual 3 -> P 1,   R 2/3, F1 4/5
    m = classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_class"]["c"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})


def test_never_predicted_and_absent_classes():
    # class 1 is never predicted (P=R=F1=0); class 2 occurs nowhere and is left out of macro-F1
    cm = confusion_matrix([0, 0, 1], [0, 0, 0], 3)
    pc = per_class(cm)
    assert pc["precision"].tolist() == pytest.approx([2 / 3, 0.0, 0.0])
    assert pc["recall"].tolist() == [1.0, 0.0, 0.0]
    assert macro_f1(cm) == pytest.approx((0.8 + 0.0) / 2)
    assert accuracy(cm) == pytest.approx(2 / 3)


def test_perfect_and_empty():
    m = classification_metrics([2, 1, 0], [2, 1, 0], ["a", "b", "c"])
    assert (m["accuracy"], m["macro_f1"]) == (1.0, 1.0)
    assert accuracy(np.zeros((2, 2))) == 0.0 and macro_f1(np.zeros((2, 2))) == 0.0


def test_bad_labels_raise():
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 3)
