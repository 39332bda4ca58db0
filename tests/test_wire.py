"""The codec: records round-trip, and hostile bytes raise only DecodeError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.wire import (
    DecodeError,
    EncodeError,
    ErrorRecord,
    Tick,
    decode,
    decode_frame,
    encode,
    encode_frame,
    record,
)


@record("test.sample")
class Sample:
    count: int
    label: str | None
    items: list
    nested: ErrorRecord | None


def test_records_round_trip_and_nest():
    value = {"a": [Sample(3, None, [1, "x"], ErrorRecord("k", "m")), Tick("t", 5)]}
    assert decode(encode(value)) == value


def test_frames_round_trip():
    frame = decode_frame(encode_frame("n1", "tcp://127.0.0.1:1", [(0, "src", "dst", 0, Sample(1, "a", [], None))]))
    assert (frame.node_id, frame.endpoint) == ("n1", "tcp://127.0.0.1:1")
    assert frame.envelopes[0].body == Sample(1, "a", [], None)


def test_unregistered_values_do_not_encode():
    with pytest.raises(EncodeError):
        encode(object())


@pytest.mark.parametrize("data, reason", [
    (b"\xc4", "bad_msgpack"),
    (b"\xc1", "bad_compressed"),  # msgpack's unused byte marks a compressed frame
    (msgpack.packb([1, 2]), "bad_shape"),
    (msgpack.packb({"v": 2}), "bad_version"),
    (msgpack.packb({"v": 1, "n": "a", "e": "b", "m": [[0, "a", "b"]]}), "bad_shape"),
    (msgpack.packb([msgpack.ExtType(1, b"nope")]), "unknown_record"),
    (msgpack.packb([msgpack.ExtType(1, b"test.sample"), "not an int", None, [], None]), "bad_shape"),
    (msgpack.packb([msgpack.ExtType(1, b"test.sample"), 1]), "bad_shape"),
    (msgpack.packb([msgpack.ExtType(1, b"\xff\xfe")]), "unknown_record"),
    (msgpack.packb(msgpack.ExtType(7, b"")), "bad_shape"),
])
def test_hostile_frames_raise_decode_error_with_reason(data, reason):
    with pytest.raises(DecodeError) as error:
        decode_frame(data)
    assert error.value.reason == reason


def test_frame_size_is_capped():
    with pytest.raises(DecodeError) as error:
        decode_frame(b"\x90" * 101, max_bytes=100)
    assert error.value.reason == "oversize"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_decode_error(data):
    try:
        decode_frame(data)
    except DecodeError:
        pass
