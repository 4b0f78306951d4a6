"""A deployment's transport encoding of tensors: each ArrayRecord travels as one Array.

Flower 1.41 moves a message as a tree of objects (the message, its RecordDict, each record,
each Array and each Array's chunks), one HTTP call per object at every hop: coordinator ->
SuperLink -> gateway -> SuperNode -> site worker and back. A 26-tensor LoRA adapter is ~56
objects, so one deployed round made some 400 small authenticated calls, each stored in the
SuperLink's SQLite state; they, not the site's work, made most of a deployed round's time.

:func:`pack_message` replaces every ArrayRecord of two or more arrays by an ArrayRecord holding one
Array of stype :data:`PACKED_STYPE` whose bytes are the original arrays' fields and payloads,
in order; :func:`unpack_message` restores the exact same Arrays (names, order, dtype, shape,
stype, bytes). The coordinator's Grid (:class:`fedecho.deploy.grid.PromptGrid`) packs what it
sends and unpacks what it receives; the ClientApp (``client/app.py``) unpacks what it receives and
packs its reply when the message came packed (so the simulation, whose Grid never packs, sees
plain records). The site's gate and audit log work on the unpacked message and reply: they see and
record the tensors that crossed the wire, byte for byte.

Packed bytes from the other side are untrusted: :func:`unpack_record` checks the whole layout
(magic, header, field types, lengths adding up) before cutting it and raises
:class:`PackedRecordError` naming the problem.

Layout: ``MAGIC`` + header length (4 bytes, little endian) + header (JSON list of ``[name, dtype,
shape, stype, nbytes]``) + the payloads back to back.
"""

from __future__ import annotations

import json
import struct

from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.app.message import make_message

__all__ = ["PACKED_STYPE", "PackedRecordError", "is_packed", "pack_message", "pack_record", "unpack_message",
           "unpack_record"]

#: The stype of a packed record's single Array.
PACKED_STYPE = "fedecho.packed-arrays/1"
#: Its (unused) dtype field and the name of its one entry in the packed ArrayRecord.
_DTYPE = "bytes"
_NAME = "packed"
MAGIC = b"FEPACK1\x00"
_LENGTH = struct.Struct("<I")
#: A header longer than this is not a packed record's (about 1 M tensor names).
_MAX_HEADER = 64 << 20


class PackedRecordError(ValueError):
    """Packed bytes that do not hold the arrays they claim to."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"packed arrays: {problem}")


def is_packed(record: ArrayRecord) -> bool:
    """Whether ``record`` is one packed Array (see the module doc)."""
    return len(record) == 1 and getattr(next(iter(record.values())), "stype", None) == PACKED_STYPE


def pack_record(record: ArrayRecord) -> ArrayRecord:
    """``record``'s arrays as one Array (a record of fewer than two arrays is returned as is)."""
    if len(record) < 2 or is_packed(record):
        return record
    header, payloads = [], []
    for name, array in record.items():
        data = bytes(array.data)
        header.append([name, array.dtype, list(array.shape), array.stype, len(data)])
        payloads.append(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    blob = b"".join([MAGIC, _LENGTH.pack(len(head)), head, *payloads])
    return ArrayRecord({_NAME: Array(dtype=_DTYPE, shape=(len(blob),), stype=PACKED_STYPE, data=blob)})


def _entry(index: int, entry: object) -> tuple[str, str, tuple[int, ...], str, int]:
    if not (isinstance(entry, list) and len(entry) == 5):
        raise PackedRecordError(f"header entry {index} is not [name, dtype, shape, stype, nbytes]")
    name, dtype, shape, stype, nbytes = entry
    if not (isinstance(name, str) and isinstance(dtype, str) and isinstance(stype, str)):
        raise PackedRecordError(f"header entry {index}: name, dtype and stype must be strings")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape)):
        raise PackedRecordError(f"array {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(nbytes, int) and not isinstance(nbytes, bool) and nbytes >= 0):
        raise PackedRecordError(f"array {name!r}: byte count {nbytes!r} is not a non-negative integer")
    return name, dtype, tuple(shape), stype, nbytes


def unpack_record(record: ArrayRecord) -> ArrayRecord:
    """The arrays packed in ``record`` (a record that is not packed is returned as is). Raises
    :class:`PackedRecordError` when the bytes do not add up."""
    if not is_packed(record):
        return record
    data = memoryview(next(iter(record.values())).data)
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start or data[:len(MAGIC)] != MAGIC:
        raise PackedRecordError(f"{len(data)} bytes without the packed-arrays magic")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if length > _MAX_HEADER or start + length > len(data):
        raise PackedRecordError(f"the header claims {length} bytes, the buffer holds {len(data) - start}")
    try:
        header = json.loads(bytes(data[start:start + length]))
    except ValueError as err:
        raise PackedRecordError(f"unreadable header ({err})") from None
    if not isinstance(header, list):
        raise PackedRecordError("the header is not a list")
    entries = [_entry(i, e) for i, e in enumerate(header)]
    if len({e[0] for e in entries}) != len(entries):
        raise PackedRecordError("an array name appears twice")
    offset, total = start + length, sum(e[4] for e in entries)
    if offset + total != len(data):
        raise PackedRecordError(f"the arrays claim {total} bytes, the buffer holds {len(data) - offset}")
    out = ArrayRecord()
    for name, dtype, shape, stype, nbytes in entries:
        out[name] = Array(dtype=dtype, shape=shape, stype=stype, data=bytes(data[offset:offset + nbytes]))
        offset += nbytes
    return out


def pack_message(message: Message) -> Message:
    """A message with the same metadata whose ArrayRecords are packed (``message`` itself when it
    carries an error or nothing to pack). ``message`` is left unchanged."""
    if message.has_error() or not any(len(r) > 1 for r in message.content.array_records.values()):
        return message
    content = RecordDict({key: pack_record(record) if isinstance(record, ArrayRecord) else record
                          for key, record in message.content.items()})
    return make_message(metadata=message.metadata, content=content)


def unpack_message(message: Message) -> tuple[Message, bool]:
    """(``message`` with its packed ArrayRecords restored in place, whether any was packed)."""
    if message.has_error():
        return message, False
    packed = [key for key, record in message.content.array_records.items() if is_packed(record)]
    for key in packed:
        message.content[key] = unpack_record(message.content[key])
    return message, bool(packed)
