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


# ---- multi-label, segmentation, regression ---------------------------------------------------

from finetune.metrics import (average_precision, iou_per_class, multilabel_metrics,  # noqa: E402
                              regression_metrics, segmentation_metrics)


def test_average_precision_by_hand():
    # ranking by score: 1 (pos), 0 (neg), 1 (pos), 0 -> precision at the positives 1/1 and 2/3
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    # a tie between a positive and a negative is one threshold: precision 1/2 there
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_multilabel_by_hand():
    y = np.array([[1, 0], [0, 1], [1, 1]])
    s = np.array([[0.9, 0.2], [0.4, 0.6], [0.3, 0.7]])
    m = multilabel_metrics(y, s, ["a", "b"])
    # class a: order 0.9 (pos), 0.4 (neg), 0.3 (pos) -> AP (1 + 2/3) / 2; class b: both positives on top -> 1
    assert m["per_class"]["a"]["ap"] == pytest.approx(5 / 6) and m["per_class"]["b"]["ap"] == pytest.approx(1.0)
    assert m["map_macro"] == pytest.approx((5 / 6 + 1) / 2)
    # pooled ranking 0.9+ 0.7+ 0.6+ 0.4- 0.3+ 0.2- : AP = (1 + 1 + 1 + 4/5) / 4
    assert m["map_micro"] == pytest.approx(3.8 / 4)
    # threshold 0.5: a tp1 fn1, b tp2 -> F1 a 2/3, b 1; micro 2*3 / (2*3 + 0 + 1)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 1) / 2) and m["f1_micro"] == pytest.approx(6 / 7)


def test_multilabel_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, 5))
    s = np.round(rng.random((60, 5)), 1)        # many ties
    m = multilabel_metrics(y, s, list("abcde"))
    assert m["map_macro"] == pytest.approx(sk.average_precision_score(y, s, average="macro"))
    assert m["map_micro"] == pytest.approx(sk.average_precision_score(y, s, average="micro"))
    assert m["f1_micro"] == pytest.approx(sk.f1_score(y, s >= 0.5, average="micro"))
    assert m["f1_macro"] == pytest.approx(sk.f1_score(y, s >= 0.5, average="macro"))


def test_segmentation_by_hand():
    t = np.array([[[0, 0], [1, -1]]])
    p = np.array([[[0, 1], [1, 1]]])                 # the ignored pixel's prediction does not count
    m = segmentation_metrics(t, p, ["a", "b", "c"])
    # a: tp 1, fn 1 -> IoU 1/2; b: tp 1, fp 1 -> 1/2; c absent everywhere -> None, not averaged
    assert m["per_class"]["a"]["iou"] == pytest.approx(0.5) and m["per_class"]["b"]["iou"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["iou"] is None and m["miou"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(2 / 3) and sum(map(sum, m["confusion"])) == 3
    assert np.isnan(iou_per_class(np.zeros((2, 2)))).all()


def test_segmentation_matches_sklearn_jaccard():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 4, (3, 8, 8)), rng.integers(0, 4, (3, 8, 8))
    m = segmentation_metrics(t, p, list("abcd"))
    assert m["miou"] == pytest.approx(sk.jaccard_score(t.ravel(), p.ravel(), average="macro"))


def test_regression_by_hand():
    m = regression_metrics([1.0, 2.0, 3.0, np.nan], [1.0, 2.0, 5.0, 100.0])   # NaN truth skipped
    assert m["n"] == 3 and m["mae"] == pytest.approx(2 / 3) and m["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert m["r2"] == pytest.approx(1 - 4 / 2)                               # SS_res 4, SS_tot 2
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    t, p = rng.normal(size=50), rng.normal(size=50)
    assert regression_metrics(t, p)["r2"] == pytest.approx(sk.r2_score(t, p))
