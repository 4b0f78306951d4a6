"""The deployment's transport encoding (fedecho.deploy.packing): a record's arrays travel as one
bytes value of a ConfigRecord (one Flower object), or as one Array when they are larger than a
Flower object, and come back byte for byte; malformed packed bytes are refused with the problem named; the
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

from fedecho.deploy.packing import (MAGIC, PACKED_KEY, PACKED_STYPE, PackedRecordError, is_packed, pack_message,
                                    pack_record, unpack_message, unpack_record)


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


def _same_arrays(received: ArrayRecord, original: ArrayRecord, arrays: dict[str, np.ndarray]) -> None:
    assert list(received) == list(arrays)
    for name, array in received.items():
        sent = original[name]
        assert (array.dtype, tuple(array.shape), array.stype, array.data) == \
            (sent.dtype, tuple(sent.shape), sent.stype, sent.data), name
        np.testing.assert_array_equal(array.numpy(), arrays[name])


def test_a_packed_message_is_one_object_per_record_and_unpacks_to_the_same_arrays():
    arrays = _adapter()
    message = _message(arrays)
    packed = pack_message(message)
    assert len(get_all_nested_objects(message)) >= 2 * len(arrays)  # Flower: an Array and a chunk per tensor
    # message, RecordDict, the arrays' ConfigRecord carrier, ConfigRecord, MetricRecord
    assert len(get_all_nested_objects(packed)) == 5
    assert packed.metadata is message.metadata and is_packed(packed.content["arrays"])
    assert isinstance(packed.content["arrays"], ConfigRecord) and list(packed.content["arrays"]) == [PACKED_KEY]
    assert not is_packed(message.content.array_records["arrays"])  # the caller's message is unchanged
    received, was_packed = unpack_message(_over_the_wire(packed))
    assert was_packed and list(received.content) == ["arrays", "config", "metrics"]  # same keys, same order
    _same_arrays(received.content.array_records["arrays"], message.content.array_records["arrays"], arrays)
    assert received.content["config"]["lr"] == 0.1 and received.content["metrics"]["n"] == 3.0


def test_a_train_message_and_its_reply_are_four_objects_each():
    arrays = _adapter()
    metadata = _message(arrays).metadata
    train = Message(metadata=metadata, content=RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "config": ConfigRecord({"lr": 0.1})}))
    reply = Message(metadata=metadata, content=RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": MetricRecord({"n": 3.0})}))
    for message in (train, reply):  # message, RecordDict, carrier, config or metrics (was 6: ArrayRecord, Array, chunk)
        assert len(get_all_nested_objects(pack_message(message))) == 4


def test_arrays_larger_than_one_flower_object_travel_as_one_chunked_array():
    arrays = _adapter()
    message = _message(arrays)
    packed = pack_message(message, max_value_bytes=1000)  # the adapter's ~4 kB do not fit
    carrier = packed.content["arrays"]
    assert isinstance(carrier, ArrayRecord) and is_packed(carrier)
    assert next(iter(carrier.values())).stype == PACKED_STYPE
    # message, RecordDict, ArrayRecord, its one Array + chunk, ConfigRecord, MetricRecord
    assert len(get_all_nested_objects(packed)) == 7
    received, was_packed = unpack_message(_over_the_wire(packed))
    assert was_packed
    _same_arrays(received.content.array_records["arrays"], message.content.array_records["arrays"], arrays)


def test_single_array_empty_and_error_messages():
    single = _message({"w": np.ones(3, dtype=np.float32)})
    packed = pack_message(single)  # one array is packed too: one object instead of three
    assert len(get_all_nested_objects(packed)) == 5 and is_packed(packed.content["arrays"])
    assert list(unpack_message(_over_the_wire(packed))[0].content.array_records["arrays"]) == ["w"]
    empty = Message(metadata=single.metadata, content=RecordDict({"arrays": ArrayRecord(),
                                                                  "config": ConfigRecord({"lr": 0.1})}))
    assert pack_message(empty) is empty and unpack_message(empty) == (empty, False)
    plain = ArrayRecord({"w": Array(np.ones(2))})
    assert unpack_record(plain) is plain and not is_packed(plain)
    from flwr.app import Error
    from flwr.app.message import make_message

    failed = make_message(metadata=single.metadata, error=Error(2, "site failed"))
    assert pack_message(failed) is failed and unpack_message(failed) == (failed, False)


@pytest.mark.parametrize("record", [
    ConfigRecord({PACKED_KEY: b"x", "lr": 0.1}),  # another entry beside the key
    ConfigRecord({PACKED_KEY: "not bytes"}),
    ConfigRecord({"packed": b"x"}),
    ConfigRecord({PACKED_KEY: [b"x"]}),
])
def test_config_records_that_are_no_carriers_are_left_alone(record):
    assert not is_packed(record) and unpack_record(record) is record
    message = Message(metadata=_message({}).metadata, content=RecordDict({"config": record}))
    assert unpack_message(message) == (message, False)


def _packed_bytes(header: object, payload: bytes = b"", magic: bytes = MAGIC) -> ConfigRecord:
    head = json.dumps(header).encode()
    return ConfigRecord({PACKED_KEY: magic + struct.pack("<I", len(head)) + head + payload})


def _as_array(carrier: ConfigRecord) -> ArrayRecord:
    blob = carrier[PACKED_KEY]
    return ArrayRecord({"packed": Array(dtype="bytes", shape=(len(blob),), stype=PACKED_STYPE, data=blob)})


@pytest.mark.parametrize("as_array", [False, True], ids=["config-record", "array"])
@pytest.mark.parametrize(("record", "problem"), [
    (_packed_bytes([], magic=b"NOTMAGIC"), "without the packed-arrays magic"),
    (_packed_bytes({"a": 1}), "the header is not a list"),
    (_packed_bytes([["a", "float32", [2], "numpy.ndarray"]]), "header entry 0 is not"),
    (_packed_bytes([["a", "float32", [-1], "numpy.ndarray", 0]]), "shape [-1] is not"),
    (_packed_bytes([["a", "float32", [2], "numpy.ndarray", 8]], b"1234"),
     "the arrays claim 8 bytes, the buffer holds 4"),
    (_packed_bytes([["a", "float32", [1], "numpy.ndarray", 2], ["a", "float32", [1], "numpy.ndarray", 2]], b"1234"),
     "an array name appears twice"),
    (ConfigRecord({PACKED_KEY: MAGIC + struct.pack("<I", 999)}), "the header claims 999 bytes"),
])
def test_malformed_packed_bytes_are_refused_with_the_problem(record, problem, as_array):
    with pytest.raises(PackedRecordError, match="packed arrays: ") as caught:
        unpack_record(_as_array(record) if as_array else record)
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
    assert len(inner.pushed) == 1 and is_packed(inner.pushed[0].content["arrays"])
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
        assert is_packed(reply.content["arrays"]) is packed
