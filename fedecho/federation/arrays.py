"""torch state dicts <-> Flower ArrayRecords."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = ["ViewArray", "array_view", "numpy_dict", "to_arrayrecord", "torch_dict", "view_record"]


def to_arrayrecord(state: Mapping[str, torch.Tensor | np.ndarray]) -> ArrayRecord:
    """Tensors (or arrays) keyed by name -> ArrayRecord, keeping names and order."""
    return ArrayRecord({
        k: v.detach().cpu().contiguous() if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        for k, v in state.items()
    })


#: .npy header bytes -> (shape, fortran_order, dtype, header length). Updates of one phase share a
#: few dozen headers (one per declared tensor); numpy parses each with ``ast.literal_eval``, which
#: cost ~45 us per array, most of the coordinator's time for 100 updates of ~100 tensors.
_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype, int]] = {}
_MAX_HEADERS = 4096


def _header(data: memoryview) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse (with a cache keyed by the exact header bytes) the ``.npy`` header at the start of ``data``."""
    major = data[6] if len(data) > 6 else 0
    size = 10 + int.from_bytes(data[8:10], "little") if major == 1 else 12 + int.from_bytes(data[8:12], "little")
    key = data[:size].tobytes()
    if key not in _HEADERS:
        stream = io.BytesIO(key)
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        if dtype.hasobject:
            raise ValueError("object arrays are never accepted")
        if len(_HEADERS) >= _MAX_HEADERS:
            _HEADERS.clear()
        _HEADERS[key] = (shape, fortran, dtype, stream.tell())
    return _HEADERS[key]


def array_view(array) -> np.ndarray:
    """A read-only, zero-copy view of a Flower ``Array`` (``.npy`` bytes): the header is parsed (once
    per distinct header) and the payload wrapped with ``np.frombuffer``, instead of
    ``Array.numpy()``'s ``np.load`` copy."""
    data = memoryview(array.data)
    shape, fortran, dtype, offset = _header(data)
    flat = np.frombuffer(data, dtype=dtype, offset=offset, count=math.prod(shape))
    return flat.reshape(shape, order="F" if fortran else "C")


class ViewArray(Array):
    """A Flower ``Array`` whose ``numpy()`` is :func:`array_view` (read-only, zero-copy, cached
    header): what the coordinator hands to a strategy's aggregation, which reads every array of
    every update (a strategy that tried to write into one would fail loudly, not corrupt it)."""

    def numpy(self) -> np.ndarray:
        return array_view(self)


def view_record(record: ArrayRecord) -> ArrayRecord:
    """The same arrays (same bytes, no copy) as :class:`ViewArray` s, in the same order."""
    out = ArrayRecord()  # (ArrayRecord({...}) would rebuild plain Arrays)
    for key, value in record.items():
        view = ViewArray.__new__(ViewArray)  # Array.__init__ re-validates; the fields are already valid
        view.__dict__.update(value.__dict__)
        out[key] = view
    return out


def numpy_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> {name: read-only ndarray view} (for checks and aggregation)."""
    return {k: array_view(v) for k, v in record.items()}


def torch_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """ArrayRecord -> {name: tensor} (copies, safe to modify)."""
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}
