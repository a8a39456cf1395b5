"""One wire object per ArrayRecord: a message's arrays packed into a single byte array.

Flower 1.42 moves a message's content as separate objects, one per Array (plus its chunks),
each pushed to and pulled from the SuperLink by its own request; with a persistent
``--database`` every such request costs several SQL transactions in the SuperLink (measured:
the SuperLink spent ~110 s of CPU in a 3-round, 3-site deployed demo, 39 objects per train
message of the 24-tensor glucose twin). Packing an ArrayRecord's tensors into one uint8 Array
makes each message a handful of objects.

Wire format of a packed record (``ArrayRecord({PACKED_KEY: Array(uint8[n])})``): an 8-byte
little-endian header length, a UTF-8 JSON header ``[[name, dtype, shape], ...]`` in the
record's order, then every tensor's bytes (C order, little-endian) one after the other.

Invariants:

* ``unpack_record(pack_record(r))`` has the same names in the same order, and arrays equal in
  dtype, shape and every byte;
* a payload that does not parse exactly (header, dtypes outside :data:`DTYPES`, sizes, trailing
  bytes) raises :class:`PackingError`; nothing partial is returned;
* packing is negotiated per message: a site packs its reply only when the request came packed,
  and records that are not packed pass through both ways unchanged.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

PACKED_KEY = "fedtwin.packed"
"""The only key of a packed ArrayRecord."""

DTYPES = frozenset(
    {"<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1"}
)
"""Dtypes a packed record may carry (little-endian numbers and booleans; never objects)."""

_HEADER_LENGTH = struct.Struct("<Q")


class PackingError(ValueError):
    """A packed ArrayRecord that does not parse."""


def _little_endian(array: np.ndarray) -> np.ndarray:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return np.asarray(array, dtype=dtype, order="C")  # (ascontiguousarray makes 0-d 1-d)


def pack_record(record: ArrayRecord) -> ArrayRecord:
    """``record``'s arrays as one uint8 Array under :data:`PACKED_KEY`."""
    header: list[list[object]] = []
    blobs: list[bytes] = []
    for name, array in record.items():
        values = _little_endian(array.numpy())
        if values.dtype.str not in DTYPES:
            raise PackingError(f"array {name!r}: dtype {values.dtype} cannot be packed")
        header.append([name, values.dtype.str, list(values.shape)])
        blobs.append(values.tobytes())
    text = json.dumps(header, separators=(",", ":")).encode()
    payload = b"".join([_HEADER_LENGTH.pack(len(text)), text, *blobs])
    return ArrayRecord({PACKED_KEY: Array(np.frombuffer(payload, dtype=np.uint8))})


def is_packed(record: ArrayRecord) -> bool:
    """True if ``record`` is a packed record (exactly one key, :data:`PACKED_KEY`)."""
    return list(record.keys()) == [PACKED_KEY]


def _parse_header(payload: bytes) -> tuple[list[tuple[str, np.dtype, tuple[int, ...]]], int]:
    if len(payload) < _HEADER_LENGTH.size:
        raise PackingError("packed arrays: shorter than their header length")
    (length,) = _HEADER_LENGTH.unpack_from(payload)
    start = _HEADER_LENGTH.size
    if length > len(payload) - start:
        raise PackingError("packed arrays: header longer than the payload")
    try:
        entries = json.loads(payload[start : start + length].decode())
    except (UnicodeDecodeError, ValueError) as error:
        raise PackingError(f"packed arrays: header is not JSON ({error})") from error
    if not isinstance(entries, list):
        raise PackingError("packed arrays: header is not a list")
    parsed: list[tuple[str, np.dtype, tuple[int, ...]]] = []
    names: set[str] = set()
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise PackingError("packed arrays: a header entry is not [name, dtype, shape]")
        name, dtype, shape = entry
        if not isinstance(name, str) or name in names:
            raise PackingError(f"packed arrays: bad or repeated name {name!r}")
        if dtype not in DTYPES:
            raise PackingError(f"packed arrays: array {name!r} has dtype {dtype!r}")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise PackingError(f"packed arrays: array {name!r} has shape {shape!r}")
        names.add(name)
        parsed.append((name, np.dtype(dtype), tuple(shape)))
    return parsed, start + length


def unpack_record(record: ArrayRecord) -> ArrayRecord:
    """The ArrayRecord that :func:`pack_record` packed into ``record``."""
    if not is_packed(record):
        raise PackingError(f"not a packed record (keys {list(record.keys())[:3]})")
    packed = record[PACKED_KEY].numpy()
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise PackingError("packed arrays: payload is not a 1-D uint8 array")
    payload = packed.tobytes()
    entries, offset = _parse_header(payload)
    arrays: dict[str, Array] = {}
    for name, dtype, shape in entries:
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if size > len(payload) - offset:
            raise PackingError(f"packed arrays: array {name!r} runs past the payload")
        values = np.frombuffer(payload, dtype=dtype, count=size // dtype.itemsize, offset=offset)
        arrays[name] = Array(values.reshape(shape).copy())
        offset += size
    if offset != len(payload):
        raise PackingError(f"packed arrays: {len(payload) - offset} bytes after the last array")
    return ArrayRecord(arrays)


def _packed_or_same(record: ArrayRecord) -> ArrayRecord:
    try:
        return pack_record(record)
    except PackingError:
        return record  # e.g. an object array: it travels as Flower sends it


def pack_content(content: RecordDict) -> RecordDict:
    """``content`` with every ArrayRecord packed (other records unchanged, same order).

    A record holding an array that cannot be packed travels unpacked.
    """
    return RecordDict(
        {
            name: _packed_or_same(record) if isinstance(record, ArrayRecord) else record
            for name, record in content.items()
        }
    )


def unpack_content(content: RecordDict) -> RecordDict:
    """``content`` with every packed ArrayRecord unpacked; raises :class:`PackingError`."""
    return RecordDict(
        {
            name: unpack_record(record)
            if isinstance(record, ArrayRecord) and is_packed(record)
            else record
            for name, record in content.items()
        }
    )


def has_packed(content: RecordDict) -> bool:
    """True if any ArrayRecord of ``content`` is packed."""
    return any(is_packed(record) for record in content.array_records.values())


def packed_arrays_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """ClientApp mod: unpack a packed request, run the app, pack its reply the same way.

    A request that is not packed passes through and its reply is left unpacked. A packed
    request that does not parse raises (Flower replies with the ClientApp's error): the site
    never runs on arrays it could not read.
    """
    if not (msg.has_content() and has_packed(msg.content)):
        return call_next(msg, context)
    msg.content = unpack_content(msg.content)
    reply = call_next(msg, context)
    if reply.has_content() and reply.content.array_records:
        reply.content = pack_content(reply.content)
    return reply
