"""Packed ArrayRecords: exact round trip, strict parsing, and the site's mod negotiating it."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedtwin.federation.packing import (
    PACKED_KEY,
    PackingError,
    is_packed,
    pack_content,
    pack_record,
    packed_arrays_mod,
    unpack_content,
    unpack_record,
)

DTYPES = st.sampled_from(
    [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_]
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
ARRAYS = DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, SHAPES))
NAMES = st.text(min_size=1, max_size=12)


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(values) for name, values in arrays.items()})


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(NAMES, ARRAYS, max_size=6))
def test_round_trip_is_exact(arrays: dict[str, np.ndarray]) -> None:
    packed = pack_record(_record(arrays))
    assert is_packed(packed) and list(packed.keys()) == [PACKED_KEY]
    back = unpack_record(packed)
    assert list(back.keys()) == list(arrays)  # same names, same order
    for name, values in arrays.items():
        got = back[name].numpy()
        assert got.dtype == values.dtype and got.shape == values.shape
        assert got.tobytes() == np.asarray(values, order="C").tobytes()


def test_big_endian_and_strided_arrays_come_back_equal() -> None:
    strided = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    big = np.arange(5, dtype=">i4")
    back = unpack_record(pack_record(_record({"s": strided, "b": big})))
    np.testing.assert_array_equal(back["s"].numpy(), strided)
    np.testing.assert_array_equal(back["b"].numpy(), big)


def _payload(arrays: dict[str, np.ndarray]) -> bytes:
    return pack_record(_record(arrays))[PACKED_KEY].numpy().tobytes()


def _from_payload(payload: bytes) -> ArrayRecord:
    return ArrayRecord({PACKED_KEY: Array(np.frombuffer(payload, dtype=np.uint8).copy())})


def test_every_truncation_and_any_trailing_byte_is_refused() -> None:
    payload = _payload({"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.int64)})
    for cut in range(len(payload)):
        with pytest.raises(PackingError):
            unpack_record(_from_payload(payload[:cut]))
    with pytest.raises(PackingError, match="bytes after the last array"):
        unpack_record(_from_payload(payload + b"\0"))


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b'[["w","|O",[1]]]', "dtype"),
        (b'[["w","<f4",[-1]]]', "shape"),
        (b'[["w","<f4",[1]],["w","<f4",[1]]]', "repeated name"),
        (b'{"w": 1}', "not a list"),
        (b"[[", "not JSON"),
    ],
)
def test_a_bad_header_is_refused(header: bytes, match: str) -> None:
    payload = len(header).to_bytes(8, "little") + header + b"\0" * 8
    with pytest.raises(PackingError, match=match):
        unpack_record(_from_payload(payload))


def test_an_object_array_travels_unpacked() -> None:
    content = RecordDict({"arrays": ArrayRecord({"ok": Array(np.ones(2, np.float32))})})
    assert is_packed(pack_content(content).array_records["arrays"])
    with pytest.raises(PackingError):
        pack_record(ArrayRecord({"x": Array(np.array(["a"], dtype=np.str_))}))


def _train_message(content: RecordDict) -> Message:
    message = Message(content, dst_node_id=3, message_type="train")
    message.metadata.__dict__["_message_id"] = message.object_id
    return message


def _echo_twice(msg: Message, context: Context) -> Message:
    """A ClientApp handler that doubles every array it was sent (and checks it got them plain)."""
    arrays = msg.content.array_records["arrays"]
    assert not is_packed(arrays)
    doubled = ArrayRecord({k: Array(v.numpy() * 2) for k, v in arrays.items()})
    return Message(RecordDict({"arrays": doubled, "m": ConfigRecord({"n": 1})}), reply_to=msg)


def _context() -> Context:
    return Context(run_id=7, node_id=3, node_config={}, state=RecordDict(), run_config={})


def test_site_mod_unpacks_a_packed_request_and_packs_the_reply() -> None:
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    request = _train_message(pack_content(RecordDict({"arrays": _record(weights)})))
    reply = packed_arrays_mod(request, _context(), _echo_twice)
    assert is_packed(reply.content.array_records["arrays"])
    back = unpack_content(reply.content).array_records["arrays"]
    for name, values in weights.items():
        np.testing.assert_array_equal(back[name].numpy(), values * 2)
    assert reply.content.config_records["m"]["n"] == 1


def test_site_mod_leaves_a_plain_request_and_its_reply_plain() -> None:
    request = _train_message(RecordDict({"arrays": _record({"w": np.ones(2, np.float32)})}))
    reply = packed_arrays_mod(request, _context(), _echo_twice)
    assert not is_packed(reply.content.array_records["arrays"])
    np.testing.assert_array_equal(reply.content.array_records["arrays"]["w"].numpy(), [2, 2])


def test_site_mod_refuses_a_packed_request_it_cannot_read() -> None:
    bad = RecordDict({"arrays": _from_payload(b"\x05\0\0\0\0\0\0\0[[1]]")})
    called: list[Message] = []

    def handler(msg: Message, context: Context) -> Message:
        called.append(msg)
        return msg

    with pytest.raises(PackingError):
        packed_arrays_mod(_train_message(bad), _context(), handler)
    assert called == []  # the site never ran on arrays it could not read
