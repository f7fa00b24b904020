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


# ---- multi-label -----------------------------------------------------------------------------

def average_precision(y_true, scores) -> float:
    """AP of one ranking: sum over positives of precision at their rank / number of positives
    (step interpolation, ties broken by a stable sort; scikit-learn's definition when scores are
    distinct). y_true (N,) {0,1}, scores (N,). NaN when there is no positive."""
    t = np.asarray(y_true, np.float64).ravel()
    s = np.asarray(scores, np.float64).ravel()
    n_pos = t.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    t, s = t[order], s[order]
    # Tied scores form one threshold: precision is taken at the end of each tie group.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0.0, tp]) / n_pos
    return float((precision * recall_gain).sum())


def multilabel_metrics(y_true, scores, classes, threshold: float = 0.5) -> dict:
    """y_true (N, K) {0,1}, scores (N, K) probabilities ->
    map_macro (mean AP over classes with a positive), map_micro (AP of all N*K decisions pooled),
    f1_micro / f1_macro at `threshold`, per-class AP and support."""
    t = np.asarray(y_true, np.float64)
    s = np.asarray(scores, np.float64)
    if t.shape != s.shape or t.ndim != 2:
        raise ValueError(f"y_true {t.shape} and scores {s.shape} must both be (N, K)")
    ap = np.array([average_precision(t[:, k], s[:, k]) for k in range(t.shape[1])])
    pred = s >= threshold
    tp, fp, fn = (pred & (t > 0)).sum(0), (pred & (t == 0)).sum(0), (~pred & (t > 0)).sum(0)
    f1_k = _ratio(2.0 * tp, 2.0 * tp + fp + fn)
    present = (tp + fp + fn) > 0
    micro = 2.0 * tp.sum() / max(1.0, 2.0 * tp.sum() + fp.sum() + fn.sum())
    return {
        "map_macro": float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0,
        "map_micro": average_precision(t.ravel(), s.ravel()) if t.sum() else 0.0,
        "f1_micro": float(micro),
        "f1_macro": float(f1_k[present].mean()) if present.any() else 0.0,
        "threshold": threshold,
        "per_class": {name: {"ap": None if np.isnan(ap[k]) else float(ap[k]), "support": int(t[:, k].sum())}
                      for k, name in enumerate(classes)},
    }


# ---- semantic segmentation -------------------------------------------------------------------

def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """(K, K) pixel confusion -> IoU (K,) = TP / (TP + FP + FN); NaN for a class absent from
    both truth and prediction."""
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return np.divide(tp, union, out=np.full(tp.shape, np.nan), where=union > 0)


def segmentation_metrics(y_true, y_pred, classes, ignore_index: int = -1) -> dict:
    """Pixel labels y_true, y_pred (N, H, W) ints; pixels with y_true == ignore_index do not count.
    -> miou (mean IoU over classes present in truth or prediction), per-class IoU, pixel accuracy,
    macro-F1, confusion."""
    t = np.asarray(y_true, np.int64).ravel()
    p = np.asarray(y_pred, np.int64).ravel()
    keep = t != ignore_index
    cm = confusion_matrix(t[keep], p[keep], len(classes))
    iou = iou_per_class(cm)
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "accuracy": accuracy(cm),
        "macro_f1": macro_f1(cm),
        "per_class": {name: {"iou": None if np.isnan(iou[k]) else float(iou[k]),
                             "support": int(cm[k].sum())} for k, name in enumerate(classes)},
        "confusion": cm.tolist(),
    }


# ---- regression ------------------------------------------------------------------------------

def regression_metrics(y_true, y_pred) -> dict:
    """Over the entries where y_true is finite: rmse, mae, r2 = 1 - SS_res / SS_tot (0 when the
    truth is constant), n."""
    t = np.asarray(y_true, np.float64).ravel()
    p = np.asarray(y_pred, np.float64).ravel()
    keep = np.isfinite(t)
    t, p = t[keep], p[keep]
    if not t.size:
        raise ValueError("no finite targets to evaluate")
    err = p - t
    ss_tot = ((t - t.mean()) ** 2).sum()
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()),
            "r2": float(1.0 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else 0.0, "n": int(t.size)}
