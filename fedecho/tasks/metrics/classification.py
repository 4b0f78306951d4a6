"""Classification metrics over a whole evaluation set (scikit-learn inside wherever it has the metric).

Inputs: ``y_true`` int class indices (N,), ``y_pred`` int class indices (N,), ``scores`` class
probabilities (N, C) (softmax outputs: one-vs-rest AUROC ranks samples by the probability of each
class, which logits do not give), or for two classes also the positive-class score (N,).
numpy arrays and torch tensors are both accepted.

Conventions:

- ``precision``, ``recall`` and ``f1`` are macro averages over the labels present in ``y_true`` or
  ``y_pred`` (scikit-learn's default), with 0 where a ratio is 0/0.
- ``balanced_accuracy`` is the mean recall over the classes present in ``y_true``.
- ``specificity`` of class c is TN / (TN + FP); it is NaN when every sample is of class c
  (no negatives). The macro value ignores NaNs.
- AUROC of class c (one-vs-rest) is undefined when class c is absent from ``y_true`` (or is all of
  it): that class gets NaN and the macro AUROC averages the defined classes only; when no class is
  defined the AUROC is NaN. Nothing is silently set to 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from fedecho.tasks.metrics._arrays import to_numpy

__all__ = [
    "accuracy",
    "auroc",
    "auroc_per_class",
    "balanced_accuracy",
    "classification_metrics",
    "confusion_matrix",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "specificity",
    "specificity_macro",
]


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct predictions."""
    t, p = _labels(y_true, y_pred)
    return float(skm.accuracy_score(t, p))


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    t, p = _labels(y_true, y_pred)
    present = np.unique(t)
    # equal to skm.balanced_accuracy_score, without its warning for predicted-only classes
    recalls = [np.mean(p[t == c] == c) for c in present]
    return float(np.mean(recalls))


def precision_macro(y_true: Any, y_pred: Any) -> float:
    """Macro precision (labels present in ``y_true`` or ``y_pred``; 0/0 counts as 0)."""
    t, p = _labels(y_true, y_pred)
    return float(skm.precision_score(t, p, average="macro", zero_division=0))


def recall_macro(y_true: Any, y_pred: Any) -> float:
    """Macro recall (labels present in ``y_true`` or ``y_pred``; 0/0 counts as 0)."""
    t, p = _labels(y_true, y_pred)
    return float(skm.recall_score(t, p, average="macro", zero_division=0))


def f1_macro(y_true: Any, y_pred: Any) -> float:
    """Macro F1 (labels present in ``y_true`` or ``y_pred``; 0/0 counts as 0)."""
    t, p = _labels(y_true, y_pred)
    return float(skm.f1_score(t, p, average="macro", zero_division=0))


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """(C, C) int counts; row = true class, column = predicted class."""
    t, p = _labels(y_true, y_pred, num_classes)
    return skm.confusion_matrix(t, p, labels=np.arange(num_classes))


def specificity(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Per-class specificity TN / (TN + FP), shape (C,); NaN for a class with no negatives."""
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    negatives = tn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(negatives > 0, tn / np.where(negatives > 0, negatives, 1), np.nan)


def specificity_macro(y_true: Any, y_pred: Any, num_classes: int) -> float:
    """Mean of the defined per-class specificities."""
    values = specificity(y_true, y_pred, num_classes)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def auroc_per_class(y_true: Any, scores: Any) -> np.ndarray:
    """One-vs-rest AUROC per class, shape (C,), from probabilities (N, C); NaN where undefined."""
    s = to_numpy(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"auroc_per_class needs scores of shape (N, C), got {s.shape}")
    t = _true(y_true, s.shape[1])
    if len(t) != len(s):
        raise ValueError(f"y_true has {len(t)} samples but scores has {len(s)}")
    out = np.full(s.shape[1], np.nan)
    for c in range(s.shape[1]):
        positives = t == c
        if positives.any() and not positives.all():
            out[c] = skm.roc_auc_score(positives, s[:, c])
    return out


def auroc(y_true: Any, scores: Any) -> float:
    """AUROC: binary from positive-class scores (N,) or (N, 2); else one-vs-rest macro (N, C).

    Binary: NaN when ``y_true`` holds a single class. Multi-class: the mean over the classes whose
    one-vs-rest AUROC is defined (see the module docstring).
    """
    s = to_numpy(scores, dtype=np.float64)
    if s.ndim == 1:
        s = np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"auroc needs scores (N,) or (N, C>=2), got shape {s.shape}")
    if s.shape[1] == 2:
        t = _true(y_true, 2)
        if len(np.unique(t)) < 2:
            return float("nan")
        return float(skm.roc_auc_score(t, s[:, 1]))
    per_class = auroc_per_class(y_true, s)
    return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


def classification_metrics(
    y_true: Any, scores: Any, class_names: Sequence[str]
) -> dict[str, float]:
    """Every classification metric from probabilities (N, C), as a flat dict.

    Keys: ``accuracy``, ``balanced_accuracy``, ``precision``, ``recall``, ``f1``,
    ``specificity`` (macro), ``specificity/<class>``, ``auroc`` and, for more than two classes,
    ``auroc/<class>``.
    """
    s = to_numpy(scores, dtype=np.float64)
    num_classes = len(class_names)
    if s.ndim != 2 or s.shape[1] != num_classes:
        raise ValueError(
            f"scores must have shape (N, {num_classes}) for classes {list(class_names)}, got {s.shape}"
        )
    t = _true(y_true, num_classes)
    p = s.argmax(axis=1)
    out = {
        "accuracy": accuracy(t, p),
        "balanced_accuracy": balanced_accuracy(t, p),
        "precision": precision_macro(t, p),
        "recall": recall_macro(t, p),
        "f1": f1_macro(t, p),
        "specificity": specificity_macro(t, p, num_classes),
        "auroc": auroc(t, s),
    }
    for name, value in zip(class_names, specificity(t, p, num_classes), strict=True):
        out[f"specificity/{name}"] = float(value)
    if num_classes > 2:
        for name, value in zip(class_names, auroc_per_class(t, s), strict=True):
            out[f"auroc/{name}"] = float(value)
    return out


def _true(y_true: Any, num_classes: int | None = None, name: str = "y_true") -> np.ndarray:
    t = to_numpy(y_true).reshape(-1)
    if t.size == 0:
        raise ValueError("metrics need at least one sample; the evaluation set is empty")
    if not np.issubdtype(t.dtype, np.integer):
        if not np.all(np.equal(np.mod(t, 1), 0)):
            raise ValueError(f"{name} must hold integer class indices, got {t.dtype} values")
        t = t.astype(np.int64)
    if t.min() < 0 or (num_classes is not None and t.max() >= num_classes):
        expected = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise ValueError(f"{name} has class indices in [{t.min()}, {t.max()}]; expected {expected}")
    return t


def _labels(y_true: Any, y_pred: Any, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    t = _true(y_true, num_classes)
    p = _true(y_pred, num_classes, name="y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} samples but y_pred has {p.size}")
    return t, p
