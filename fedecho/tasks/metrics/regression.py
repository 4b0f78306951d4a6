"""Regression metrics: MAE, RMSE, R² (scikit-learn inside).

Inputs: predictions and references of the same shape, (N,) or (N, k) (then averaged uniformly
over the k outputs), numpy arrays or torch tensors. Units are those of the inputs (EF %, mL, years,
mm). R² needs at least two samples with a non-constant reference; otherwise it is NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from fedecho.tasks.metrics._arrays import to_numpy

__all__ = ["mae", "r2", "regression_metrics", "rmse"]


def mae(pred: Any, target: Any) -> float:
    """Mean absolute error."""
    p, t = _pair(pred, target)
    return float(skm.mean_absolute_error(t, p))


def rmse(pred: Any, target: Any) -> float:
    """Root mean squared error."""
    p, t = _pair(pred, target)
    return float(skm.root_mean_squared_error(t, p))


def r2(pred: Any, target: Any) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot; NaN when undefined (N < 2 or SS_tot = 0)."""
    p, t = _pair(pred, target)
    if len(t) < 2 or np.all(t == t[0]):
        return float("nan")
    return float(skm.r2_score(t, p))


def regression_metrics(pred: Any, target: Any) -> dict[str, float]:
    """``mae``, ``rmse`` and ``r2`` in one dict."""
    return {"mae": mae(pred, target), "rmse": rmse(pred, target), "r2": r2(pred, target)}


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p = to_numpy(pred, dtype=np.float64)
    t = to_numpy(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    if p.size == 0:
        raise ValueError("metrics need at least one sample; the evaluation set is empty")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("predictions or targets contain NaN/Inf; drop them before scoring")
    return p, t
