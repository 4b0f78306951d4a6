"""torch state dicts <-> Flower ArrayRecords."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord

__all__ = ["array_view", "numpy_dict", "to_arrayrecord", "torch_dict"]


def to_arrayrecord(state: Mapping[str, torch.Tensor | np.ndarray]) -> ArrayRecord:
    """Tensors (or arrays) keyed by name -> ArrayRecord, keeping names and order."""
    return ArrayRecord({
        k: v.detach().cpu().contiguous() if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        for k, v in state.items()
    })


def array_view(array) -> np.ndarray:
    """A read-only, zero-copy view of a Flower ``Array`` (``.npy`` bytes): the header is parsed and
    the payload wrapped with ``np.frombuffer``, instead of ``Array.numpy()``'s ``np.load`` copy."""
    data = memoryview(array.data)
    stream = io.BytesIO(data[:4096].tobytes())
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        raise ValueError("object arrays are never accepted")
    flat = np.frombuffer(data, dtype=dtype, offset=stream.tell(), count=int(np.prod(shape, dtype=np.int64)))
    return flat.reshape(shape, order="F" if fortran else "C")


def numpy_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> {name: read-only ndarray view} (for checks and aggregation)."""
    return {k: array_view(v) for k, v in record.items()}


def torch_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """ArrayRecord -> {name: tensor} (copies, safe to modify)."""
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}
