"""torch state dicts <-> Flower ArrayRecords."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord

__all__ = ["numpy_dict", "to_arrayrecord", "torch_dict"]


def to_arrayrecord(state: Mapping[str, torch.Tensor | np.ndarray]) -> ArrayRecord:
    """Tensors (or arrays) keyed by name -> ArrayRecord, keeping names and order."""
    return ArrayRecord({
        k: v.detach().cpu().contiguous() if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        for k, v in state.items()
    })


def numpy_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> {name: ndarray} (read-only views are fine for checks and aggregation)."""
    return {k: v.numpy() for k, v in record.items()}


def torch_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """ArrayRecord -> {name: tensor} (copies, safe to modify)."""
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}
