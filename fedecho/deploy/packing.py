"""A deployment's transport encoding of tensors: each ArrayRecord travels as one record value.

Flower 1.41 moves a message as a tree of objects (the message, its RecordDict, each record,
each Array and each Array's chunks), one HTTP call per object at every hop: coordinator ->
SuperLink -> gateway -> SuperNode -> site worker and back, each receiver fetching them two at a
time (``FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PULLS``, capped at the core count). A 26-tensor LoRA
adapter as Flower sends it is ~56 objects; every object, not the site's work, costs a deployed
round its time.

:func:`pack_message` replaces every non-empty ArrayRecord by a *carrier* of the same key holding
its arrays' fields and payloads as one bytes value (:func:`pack_bytes`):

- a ConfigRecord with the single entry :data:`PACKED_KEY` (one Flower object: a train message is
  the message, its RecordDict, the carrier and the config record, 4 objects instead of 6 with
  the tensors in an Array and its chunk), when the bytes fit in one Flower object (at most
  ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``, 5 MiB: a record value is never chunked);
- otherwise an ArrayRecord holding one Array of stype :data:`PACKED_STYPE` (Flower cuts its
  bytes into chunks of that size: 3 objects + one per further chunk).

:func:`unpack_message` restores the exact same Arrays (names, order, dtype, shape, stype, bytes)
from either carrier. The coordinator's Grid (:class:`fedecho.deploy.grid.PromptGrid`) packs what
it sends and unpacks what it receives; the ClientApp (``client/app.py``) unpacks what it
receives and packs its reply when the message came packed (so the simulation, whose Grid never
packs, sees plain records). The site's gate and audit log work on the unpacked message and
reply: they see and record the tensors that crossed the wire, byte for byte.

Packed bytes from the other side are untrusted: :func:`unpack_record` checks the whole layout
(magic, header, field types, lengths adding up) before cutting it and raises
:class:`PackedRecordError` naming the problem. A ConfigRecord is a carrier only when
:data:`PACKED_KEY` is its one entry and a bytes value; any other ConfigRecord is left alone.

Layout: ``MAGIC`` + header length (4 bytes, little endian) + header (JSON list of ``[name, dtype,
shape, stype, nbytes]``) + the payloads back to back.
"""

from __future__ import annotations

import json
import struct

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message import make_message
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

__all__ = ["MAX_VALUE_BYTES", "PACKED_KEY", "PACKED_STYPE", "PackedRecordError", "is_packed", "pack_bytes",
           "pack_message", "pack_record", "unpack_message", "unpack_record"]

#: The one key of a ConfigRecord that carries packed arrays.
PACKED_KEY = "fedecho.packed-arrays"
#: Largest packed bytes carried as a ConfigRecord value (one Flower object, never chunked): the size
#: Flower cuts an Array's bytes into. Larger ones travel as an Array, in chunks.
MAX_VALUE_BYTES = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
#: The stype of a packed record's single Array (bytes over :data:`MAX_VALUE_BYTES`).
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


def is_packed(record: object) -> bool:
    """Whether ``record`` is a carrier of packed arrays: a ConfigRecord whose one entry is
    :data:`PACKED_KEY` with a bytes value, or an ArrayRecord of one Array of stype
    :data:`PACKED_STYPE` (see the module doc)."""
    if isinstance(record, ConfigRecord):
        return len(record) == 1 and isinstance(record.get(PACKED_KEY), bytes)
    if isinstance(record, ArrayRecord):
        return len(record) == 1 and getattr(next(iter(record.values())), "stype", None) == PACKED_STYPE
    return False


def pack_bytes(record: ArrayRecord) -> bytes:
    """``record``'s arrays as one buffer (the layout of the module doc)."""
    header, payloads = [], []
    for name, array in record.items():
        data = bytes(array.data)
        header.append([name, array.dtype, list(array.shape), array.stype, len(data)])
        payloads.append(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LENGTH.pack(len(head)), head, *payloads])


def pack_record(record: ArrayRecord, *, max_value_bytes: int = MAX_VALUE_BYTES) -> ConfigRecord | ArrayRecord:
    """The carrier of ``record``'s arrays: a ConfigRecord when the packed bytes are at most
    ``max_value_bytes``, else an ArrayRecord of one Array (see the module doc). An empty or
    already packed record is returned as is."""
    if not record or is_packed(record):
        return record
    blob = pack_bytes(record)
    if len(blob) <= max_value_bytes:
        return ConfigRecord({PACKED_KEY: blob})
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


def unpack_record(record: ConfigRecord | ArrayRecord) -> ConfigRecord | ArrayRecord:
    """The arrays a carrier holds, as an ArrayRecord (a record that is no carrier is returned as
    is). Raises :class:`PackedRecordError` when the bytes do not add up."""
    if not is_packed(record):
        return record
    value = record[PACKED_KEY] if isinstance(record, ConfigRecord) else next(iter(record.values())).data
    data = memoryview(value)
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


def pack_message(message: Message, *, max_value_bytes: int = MAX_VALUE_BYTES) -> Message:
    """A message with the same metadata whose non-empty ArrayRecords are carriers (``message``
    itself when it carries an error or no arrays). ``message`` is left unchanged."""
    if message.has_error() or not any(len(r) for r in message.content.array_records.values()):
        return message
    content = RecordDict({key: pack_record(record, max_value_bytes=max_value_bytes)
                          if isinstance(record, ArrayRecord) else record for key, record in message.content.items()})
    return make_message(metadata=message.metadata, content=content)


def unpack_message(message: Message) -> tuple[Message, bool]:
    """(``message`` with its carriers restored in place as ArrayRecords, whether it had any)."""
    if message.has_error():
        return message, False
    if not any(is_packed(record) for record in message.content.values()):
        return message, False
    # a new RecordDict in the same order (replacing a record by one of another type in place logs
    # a Flower warning); the records that are no carriers are the same objects
    message.content = RecordDict({key: unpack_record(record) for key, record in message.content.items()})
    return message, True
