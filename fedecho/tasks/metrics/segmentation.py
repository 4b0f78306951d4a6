"""Segmentation overlap metrics: Dice and IoU (Jaccard) per label, per image.

Inputs are integer label maps ``pred`` and ``target`` of shape (N, H, W) (or one (H, W) map).
Scores are computed per image and per label, then averaged over images (the convention of
MONAI's ``DiceMetric`` and of the CAMUS challenge), not pooled over all pixels of the set.

Empty label: when a label is absent from both the prediction and the target of an image, its Dice
and IoU for that image are ``empty_value`` (default 1.0: nothing to find and nothing predicted is
perfect agreement). Pass ``empty_value=float("nan")`` to leave such images out of that label's
mean instead. A label absent from the target but predicted scores 0, as does the reverse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedecho.tasks.metrics._arrays import to_numpy

__all__ = ["dice_per_label", "iou_per_label", "segmentation_metrics"]


def dice_per_label(
    pred: Any, target: Any, labels: Sequence[int], *, empty_value: float = 1.0
) -> np.ndarray:
    """Dice 2|P∩T| / (|P|+|T|) per image and label, shape (N, len(labels))."""
    inter, p_sum, t_sum = _counts(pred, target, labels)
    denom = p_sum + t_sum
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1), empty_value)


def iou_per_label(
    pred: Any, target: Any, labels: Sequence[int], *, empty_value: float = 1.0
) -> np.ndarray:
    """IoU |P∩T| / |P∪T| per image and label, shape (N, len(labels))."""
    inter, p_sum, t_sum = _counts(pred, target, labels)
    union = p_sum + t_sum - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), empty_value)


def segmentation_metrics(
    pred: Any, target: Any, label_names: Mapping[int, str], *, empty_value: float = 1.0
) -> dict[str, float]:
    """``dice``/``iou`` (mean over the given labels) and ``dice/<name>``/``iou/<name>`` per label.

    ``label_names`` maps each label value to score (usually the foreground labels) to its name.
    """
    labels = list(label_names)
    dice = _mean_over_images(dice_per_label(pred, target, labels, empty_value=empty_value))
    iou = _mean_over_images(iou_per_label(pred, target, labels, empty_value=empty_value))
    out = {"dice": _nanmean(dice), "iou": _nanmean(iou)}
    for i, label in enumerate(labels):
        out[f"dice/{label_names[label]}"] = float(dice[i])
        out[f"iou/{label_names[label]}"] = float(iou[i])
    return out


def _counts(pred: Any, target: Any, labels: Sequence[int]) -> tuple[np.ndarray, ...]:
    p = to_numpy(pred)
    t = to_numpy(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    if p.ndim == 2:
        p, t = p[None], t[None]
    if p.ndim != 3:
        raise ValueError(f"label maps must be (N, H, W) or (H, W), got shape {p.shape}")
    if not labels:
        raise ValueError("no labels to score; pass at least one label value")
    p = p.reshape(len(p), -1)
    t = t.reshape(len(t), -1)
    inter, p_sum, t_sum = [], [], []
    for label in labels:
        pm, tm = p == label, t == label
        inter.append((pm & tm).sum(axis=1))
        p_sum.append(pm.sum(axis=1))
        t_sum.append(tm.sum(axis=1))
    return tuple(np.stack(v, axis=1).astype(np.float64) for v in (inter, p_sum, t_sum))


def _mean_over_images(scores: np.ndarray) -> np.ndarray:
    defined = np.isfinite(scores)
    sums = np.where(defined, scores, 0.0).sum(axis=0)
    counts = defined.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
