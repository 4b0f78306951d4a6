"""torch state dicts <-> Flower ArrayRecords, and the parsing of arrays a site sent.

A site's reply is untrusted bytes: :func:`parse_array` checks each ``.npy`` payload (serialisation
type, header, dtype, declared metadata, exact payload length) before viewing it, and raises
:class:`MalformedArrayError` naming the array and the problem, so that the coordinator rejects
that one reply instead of failing the round for everyone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = ["MalformedArrayError", "ViewArray", "array_view", "numpy_dict", "parse_array", "parse_record",
           "to_arrayrecord", "torch_dict", "view_record"]


def to_arrayrecord(state: Mapping[str, torch.Tensor | np.ndarray]) -> ArrayRecord:
    """Tensors (or arrays) keyed by name -> ArrayRecord, keeping names and order (numpy arrays, even
    read-only views, are serialised directly)."""
    return ArrayRecord({
        k: Array(v.detach().cpu().contiguous()) if isinstance(v, torch.Tensor) else Array(np.ascontiguousarray(v))
        for k, v in state.items()
    })


#: .npy header bytes -> (shape, fortran_order, dtype, header length, dtype name). Updates of one phase share a
#: few dozen headers (one per declared tensor); numpy parses each with ``ast.literal_eval``, which
#: cost ~45 us per array, most of the coordinator's time for 100 updates of ~100 tensors.
_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype, int, str]] = {}
_MAX_HEADERS = 4096


class MalformedArrayError(ValueError):
    """An array of a reply cannot be read as the ``.npy`` payload it claims to be."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"array {name!r}: {problem}")
        self.name = name
        self.problem = problem


def _header(data: memoryview) -> tuple[tuple[int, ...], bool, np.dtype, int, str]:
    """Parse (with a cache keyed by the exact header bytes) the ``.npy`` header at the start of
    ``data``. Raises ValueError for anything that is not a valid header of a plain array."""
    if len(data) < 10 or data[:6].tobytes() != b"\x93NUMPY":
        raise ValueError(f"not .npy data ({len(data)} bytes without the .npy magic)")
    major = data[6]
    size = 10 + int.from_bytes(data[8:10], "little") if major == 1 else 12 + int.from_bytes(data[8:12], "little")
    if size > len(data):
        raise ValueError(f"the .npy header claims {size} bytes but the buffer holds {len(data)}")
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
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        if len(_HEADERS) >= _MAX_HEADERS:
            _HEADERS.clear()
        _HEADERS[key] = (tuple(shape), fortran, dtype, stream.tell(), str(dtype))
    return _HEADERS[key]


def parse_array(name: str, array: Array) -> np.ndarray:
    """A read-only, zero-copy view of one received ``Array``, after checking that its bytes are
    exactly one ``.npy`` array matching the ``Array``'s own dtype and shape fields.

    Raises :class:`MalformedArrayError` (naming ``name``) for a foreign serialisation type, an
    unreadable header, object dtype, metadata that contradicts the header, or a payload shorter or
    longer than the header's shape and dtype require.
    """
    if getattr(array, "stype", None) != "numpy.ndarray":
        raise MalformedArrayError(name, f"serialisation type {getattr(array, 'stype', None)!r}, "
                                        "expected 'numpy.ndarray'")
    if not isinstance(getattr(array, "data", None), (bytes, bytearray, memoryview)):
        raise MalformedArrayError(name, "no byte payload")
    data = memoryview(array.data)
    try:
        shape, fortran, dtype, offset, dtype_name = _header(data)
    except (ValueError, SyntaxError, TypeError) as err:
        raise MalformedArrayError(name, f"unreadable .npy header ({err})") from None
    if dtype_name != array.dtype:
        raise MalformedArrayError(name, f"payload has dtype {dtype}, the array claims {array.dtype}")
    if shape != tuple(array.shape):
        raise MalformedArrayError(name, f"payload has shape {shape}, the array claims {tuple(array.shape)}")
    needed = offset + math.prod(shape) * dtype.itemsize
    if len(data) != needed:
        how = f"{needed - len(data)} bytes short" if len(data) < needed else f"{len(data) - needed} bytes too long"
        raise MalformedArrayError(name, f"payload is {how} (shape {shape} of {dtype} needs "
                                        f"{needed} bytes with its header, got {len(data)})")
    flat = np.frombuffer(data, dtype=dtype, offset=offset, count=math.prod(shape))
    return flat.reshape(shape, order="F" if fortran else "C")


def parse_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Every array of a received record (see :func:`parse_array`); all problems are raised together
    as one :class:`MalformedArrayError` whose message lists each array."""
    arrays: dict[str, np.ndarray] = {}
    problems: list[MalformedArrayError] = []
    for name, value in record.items():
        try:
            arrays[name] = parse_array(name, value)
        except MalformedArrayError as err:
            problems.append(err)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise MalformedArrayError(problems[0].name, "; ".join(str(p) for p in problems))
    return arrays


def array_view(array: Array) -> np.ndarray:
    """A read-only, zero-copy view of a Flower ``Array`` (``.npy`` bytes): the header is parsed (once
    per distinct header) and the payload wrapped with ``np.frombuffer``, instead of
    ``Array.numpy()``'s ``np.load`` copy. The bytes are checked as in :func:`parse_array`."""
    return parse_array("?", array)


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
    return {k: parse_array(k, v) for k, v in record.items()}


def torch_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """ArrayRecord -> {name: tensor} (copies, safe to modify)."""
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}
