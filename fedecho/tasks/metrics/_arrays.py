"""Conversion of metric inputs (numpy arrays, torch tensors, lists) to numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_numpy"]


def to_numpy(values: Any, *, dtype: Any = None) -> np.ndarray:
    """Return ``values`` as a numpy array (detached and on CPU for a torch tensor)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    return array.astype(dtype, copy=False) if dtype is not None else array
