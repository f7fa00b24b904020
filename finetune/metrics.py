"""Classification metrics in plain numpy.

Conventions (the common ones, e.g. scikit-learn's defaults with zero_division=0):
- confusion[i, j] = number of samples of true class i predicted as class j;
- precision/recall/F1 of a class with an empty denominator are 0;
- macro-F1 averages over the classes that occur in y_true or y_pred, so a class absent from
  the whole evaluation neither helps nor hurts.
"""
from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """y_true, y_pred (N,) ints in [0, num_classes) -> (num_classes, num_classes) int64."""
    t = np.asarray(y_true, np.int64).ravel()
    p = np.asarray(y_pred, np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} entries, y_pred {p.size}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, np.float64), where=den > 0)


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """(K, K) confusion -> precision, recall, f1, support: each (K,)."""
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    predicted, actual = cm.sum(0), cm.sum(1)
    precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual.astype(np.int64)}


def accuracy(confusion: np.ndarray) -> float:
    cm = np.asarray(confusion)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


def macro_f1(confusion: np.ndarray) -> float:
    cm = np.asarray(confusion)
    present = (cm.sum(0) + cm.sum(1)) > 0
    if not present.any():
        return 0.0
    return float(per_class(cm)["f1"][present].mean())


def classification_metrics(y_true, y_pred, classes: list[str] | tuple[str, ...]) -> dict:
    """JSON-ready {accuracy, macro_f1, per_class: {name: {precision, recall, f1, support}},
    confusion (K, K) nested list} for labels indexing `classes`."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    pc = per_class(cm)
    return {
        "accuracy": accuracy(cm),
        "macro_f1": macro_f1(cm),
        "per_class": {name: {"precision": float(pc["precision"][i]), "recall": float(pc["recall"][i]),
                             "f1": float(pc["f1"][i]), "support": int(pc["support"][i])}
                      for i, name in enumerate(classes)},
        "confusion": cm.tolist(),
    }
