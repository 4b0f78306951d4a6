"""The deployment's transport encoding (fedecho.deploy.packing): a record's arrays travel as one
Array and come back byte for byte; malformed packed bytes are refused with the problem named; the
coordinator's PromptGrid packs what it sends and unpacks replies (a malformed reply becomes that
site's error reply); the ClientApp answers packed with packed and plain with plain."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from fedecho.deploy.packing import (MAGIC, PACKED_STYPE, PackedRecordError, is_packed, pack_message, pack_record,
                                    unpack_message, unpack_record)


def _adapter(n: int = 26) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {f"block{i}.lora_{'AB'[i % 2]}": rng.standard_normal((8, 5 + i)).astype(np.float32) for i in range(n)}
    arrays["step"] = np.array(3, dtype=np.int64)  # a 0-d array and another dtype
    arrays["empty"] = np.zeros((0, 4), dtype=np.float16)
    return arrays


def _message(arrays: dict[str, np.ndarray], reply_to: str = "") -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=1, dst_node_id=7, reply_to_message_id=reply_to,
                        group_id="2", created_at=time.time(), ttl=60, message_type="train")
    return Message(metadata=metadata, content=RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        "config": ConfigRecord({"lr": 0.1}), "metrics": MetricRecord({"n": 3.0})}))


def _over_the_wire(message: Message) -> Message:
    """``message`` deflated into Flower's objects and inflated again, as a receiver gets it."""
    objects = get_all_nested_objects(message)
    contents = {object_id: obj.deflate() for object_id, obj in objects.items()}
    return inflate_object_from_contents(message.object_id, contents)


def test_a_packed_message_is_six_objects_and_unpacks_to_the_same_arrays():
    arrays = _adapter()
    message = _message(arrays)
    packed = pack_message(message)
    assert len(get_all_nested_objects(message)) >= 2 * len(arrays)  # Flower: an Array and a chunk per tensor
    # message, RecordDict, ArrayRecord, its one Array + chunk, ConfigRecord, MetricRecord
    assert len(get_all_nested_objects(packed)) == 7
    assert packed.metadata is message.metadata and is_packed(packed.content.array_records["arrays"])
    assert not is_packed(message.content.array_records["arrays"])  # the caller's message is unchanged
    received, was_packed = unpack_message(_over_the_wire(packed))
    assert was_packed
    record, original = received.content.array_records["arrays"], message.content.array_records["arrays"]
    assert list(record) == list(arrays)
    for name, array in record.items():
        sent = original[name]
        assert (array.dtype, tuple(array.shape), array.stype, array.data) == \
            (sent.dtype, tuple(sent.shape), sent.stype, sent.data), name
        np.testing.assert_array_equal(array.numpy(), arrays[name])
    assert received.content["config"]["lr"] == 0.1 and received.content["metrics"]["n"] == 3.0


def test_plain_error_and_single_array_messages_are_left_alone():
    plain = _message({"w": np.ones(3, dtype=np.float32)})
    assert pack_message(plain) is plain  # one array: nothing to gain
    assert unpack_message(plain) == (plain, False)
    record = ArrayRecord({"w": Array(np.ones(2))})
    assert pack_record(record) is record and unpack_record(record) is record
    from flwr.app import Error
    from flwr.app.message import make_message

    failed = make_message(metadata=plain.metadata, error=Error(2, "site failed"))
    assert pack_message(failed) is failed and unpack_message(failed) == (failed, False)


def _packed_bytes(header: object, payload: bytes = b"", magic: bytes = MAGIC) -> ArrayRecord:
    head = json.dumps(header).encode()
    blob = magic + struct.pack("<I", len(head)) + head + payload
    return ArrayRecord({"packed": Array(dtype="bytes", shape=(len(blob),), stype=PACKED_STYPE, data=blob)})


@pytest.mark.parametrize(("record", "problem"), [
    (_packed_bytes([], magic=b"NOTMAGIC"), "without the packed-arrays magic"),
    (_packed_bytes({"a": 1}), "the header is not a list"),
    (_packed_bytes([["a", "float32", [2], "numpy.ndarray"]]), "header entry 0 is not"),
    (_packed_bytes([["a", "float32", [-1], "numpy.ndarray", 0]]), "shape [-1] is not"),
    (_packed_bytes([["a", "float32", [2], "numpy.ndarray", 8]], b"1234"),
     "the arrays claim 8 bytes, the buffer holds 4"),
    (_packed_bytes([["a", "float32", [1], "numpy.ndarray", 2], ["a", "float32", [1], "numpy.ndarray", 2]], b"1234"),
     "an array name appears twice"),
    (ArrayRecord({"packed": Array(dtype="bytes", shape=(12,), stype=PACKED_STYPE,
                                  data=MAGIC + struct.pack("<I", 999))}), "the header claims 999 bytes"),
])
def test_malformed_packed_bytes_are_refused_with_the_problem(record, problem):
    with pytest.raises(PackedRecordError, match="packed arrays: ") as caught:
        unpack_record(record)
    assert problem in str(caught.value)


class _RecordingGrid:
    """A Grid stand-in that keeps what was pushed and replies with ``reply``'s content."""

    def __init__(self, reply: RecordDict) -> None:
        self.pushed: list[Message] = []
        self.reply = reply

    def push_messages(self, messages):
        self.pushed.extend(messages)
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        return [Message(metadata=Metadata(run_id=1, message_id="", src_node_id=7, dst_node_id=1,
                                          reply_to_message_id=m, group_id="", created_at=time.time(), ttl=60,
                                          message_type="train"), content=self.reply) for m in message_ids]


def test_the_prompt_grid_packs_what_it_sends_and_unpacks_replies():
    from fedecho.deploy.grid import PromptGrid

    arrays = _adapter(4)
    reply = pack_message(_message(arrays)).content
    inner = _RecordingGrid(reply)
    replies = list(PromptGrid(inner).send_and_receive([_message(arrays)], timeout=5))  # type: ignore[arg-type]
    assert len(inner.pushed) == 1 and is_packed(inner.pushed[0].content.array_records["arrays"])
    assert len(replies) == 1 and list(replies[0].content.array_records["arrays"]) == list(arrays)

    broken = RecordDict({"arrays": _packed_bytes([["a", "float32", [2], "numpy.ndarray", 8]], b"1234")})
    grid = PromptGrid(_RecordingGrid(broken))  # type: ignore[arg-type]
    replies = list(grid.send_and_receive([_message(arrays)], timeout=5))
    assert len(replies) == 1 and replies[0].has_error()
    assert replies[0].metadata.src_node_id == 7 and replies[0].metadata.reply_to_message_id == "m0"
    assert "the site's reply is malformed" in replies[0].error.reason


def test_the_client_app_replies_packed_to_packed_and_plain_to_plain(monkeypatch):
    import client.app as client_app

    seen = []

    def handle(kind, message, context, base, chain):
        seen.append(list(message.content.array_records["arrays"]))
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in _adapter(3).items()})}),
                       reply_to=message)

    monkeypatch.setattr(client_app, "handle", handle)
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 7)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    arrays = _adapter(3)
    for packed in (True, False):
        message = _message(arrays)
        message.metadata.__dict__["_message_id"] = message.object_id
        sent = _over_the_wire(pack_message(message) if packed else message)
        sent.metadata.__dict__["_message_id"] = message.object_id
        reply = client_app._serve("train", sent, None, {}, [])
        assert seen[-1] == list(arrays)  # the site always sees plain arrays
        assert is_packed(reply.content.array_records["arrays"]) is packed
