"""Checks every site reply against the phase's declaration before it reaches aggregation.

A reply is rejected (and the reason logged) for unexpected or missing tensors, wrong shapes or
dtypes, NaN/Inf values, or an update whose L2 norm (‖w_site − w_global‖ over all float tensors)
exceeds the configured bound. All problems of a reply are reported together.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedecho.federation.contract import Declaration

__all__ = ["check_update", "update_norm"]


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of the difference over every floating-point tensor present in both."""
    total = 0.0
    for name, value in arrays.items():
        ref = reference.get(name)
        if ref is None or not np.issubdtype(value.dtype, np.floating):
            continue
        diff = (value - ref).ravel()
        total += float(np.dot(diff, diff))
    return float(np.sqrt(total))


def check_update(
    arrays: Mapping[str, np.ndarray],
    declaration: Declaration,
    *,
    reference: Mapping[str, np.ndarray] | None = None,
    max_update_norm: float | None = None,
) -> list[str]:
    """Every problem of one reply (empty list: the reply is acceptable)."""
    problems = [f"unexpected tensor {name!r}" for name in arrays if name not in declaration]
    problems += [f"missing tensor {name!r}" for name in declaration if name not in arrays]
    for name, spec in declaration.items():
        value = arrays.get(name)
        if value is None:
            continue
        if tuple(value.shape) != spec.shape:
            problems.append(f"{name!r} has shape {tuple(value.shape)}, declared {spec.shape}")
            continue
        if str(value.dtype) != spec.dtype:
            problems.append(f"{name!r} has dtype {value.dtype}, declared {spec.dtype}")
            continue
        # a finite sum of squares means every value is finite (NaN/Inf propagate): one pass
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(np.dot(value.ravel(), value.ravel())):
            bad = int(value.size - np.isfinite(value).sum())
            if bad:
                problems.append(f"{name!r} has {bad} NaN/Inf values")
    if not problems and reference is not None and max_update_norm is not None:
        norm = update_norm(arrays, reference)
        if norm > max_update_norm:
            problems.append(f"update norm {norm:.4g} exceeds the bound {max_update_norm:.4g}")
    return problems
