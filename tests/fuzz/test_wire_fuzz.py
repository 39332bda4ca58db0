"""Hostile input in-process: the wire codec and the replicated state machine's apply.

The codec's promise (protocols/wire.py): decoding untrusted bytes raises only DecodeError and
never builds a record whose simply typed fields have the wrong type. The state machine's
(protocols/control.py): ``apply`` never raises on a committed entry, whatever it holds, since a
committed bad entry would stop every master at the same index.

`make test` runs a bounded number of examples; `make fuzz` (marker ``fuzz``) runs the same
properties at length.
"""

from __future__ import annotations

import math
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import wire
from protocols.control import Batch, ClientCommand, ControlState
from tests.fuzz.frames import RECORD_CLASSES, HostileFrames, corpus

QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRAMES = corpus()
# The same frames compressed (whatever it saves), with either codec: mutations reach decompression.
COMPRESSED_FRAMES = [bytes((wire.COMPRESSED, codec)) + len(frame).to_bytes(4, "big") + wire._COMPRESSORS[codec](frame)
                     for frame in FRAMES for codec in (wire.ZLIB, wire.LZ4)]


def decodes_or_rejects(data: bytes) -> wire.Frame | None:
    """decode_frame's only way to fail is DecodeError; a frame it accepts is well shaped."""
    try:
        frame = wire.decode_frame(data)
    except wire.DecodeError as exc:
        assert exc.reason in ("oversize", "bad_msgpack", "bad_shape", "bad_version", "unknown_record",
                              "bad_compressed", "compressed_oversize"), exc.reason
        return None
    for envelope in frame.envelopes:
        assert envelope.kind in wire.KINDS
        assert isinstance(envelope.source, str) and isinstance(envelope.destination, str)
        assert isinstance(envelope.correlation_id, int)
        check_record_types(envelope.body)
    return frame


def check_record_types(value, depth: int = 0) -> None:
    """Every record inside ``value`` has simply typed fields of their declared types."""
    if depth > 2000:
        return
    if wire.is_record(value):
        hints = typing.get_type_hints(type(value))
        for name, annotation in hints.items():
            allowed = wire._expected_types(annotation)
            field_value = getattr(value, name)
            if allowed is not None:
                assert isinstance(field_value, allowed), (type(value).__name__, name, field_value)
            check_record_types(field_value, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value[:50]:
            check_record_types(item, depth + 1)
    elif isinstance(value, dict):
        for item in list(value.values())[:50]:
            check_record_types(item, depth + 1)


def mutations(frames=FRAMES):
    return st.tuples(st.sampled_from(frames), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255),
                                                                 st.sampled_from(("flip", "cut", "insert"))),
                                                       min_size=1, max_size=8))


def mutate(frame: bytes, edits) -> bytes:
    data = bytearray(frame)
    for position, byte, how in edits:
        position %= max(1, len(data))
        if how == "flip" and data:
            data[position] = byte
        elif how == "cut":
            del data[position:]
        else:
            data[position:position] = bytes([byte])
    return bytes(data)


# --------------------------------------------------------------------------- the codec


@QUICK
@given(st.binary(max_size=4096))
def test_random_bytes_are_rejected_never_raised(data):
    decodes_or_rejects(data)


@QUICK
@given(mutations())
def test_mutated_frames_are_rejected_or_well_formed(mutation):
    decodes_or_rejects(mutate(*mutation))


@QUICK
@given(mutations(COMPRESSED_FRAMES))
def test_mutated_compressed_frames_are_rejected_or_well_formed(mutation):
    decodes_or_rejects(mutate(*mutation))


def test_the_compressed_category_reaches_frames_through_decompression_and_every_refusal():
    frames = HostileFrames(11)
    outcomes = set()
    for _ in range(400):
        data = frames._compressed()[0]
        try:
            wire.decode_frame(data)
            outcomes.add("decoded")
        except wire.DecodeError as exc:
            outcomes.add(exc.reason)
    assert {"decoded", "bad_compressed", "compressed_oversize", "bad_msgpack"} <= outcomes, outcomes
    assert all(frame == wire.decompress(compressed) for frame, compressed in zip(FRAMES, COMPRESSED_FRAMES[::2]))


@QUICK
@given(st.integers(0, 2**32))
def test_hostile_frames_are_rejected_or_well_formed(seed):
    frames = HostileFrames(seed)
    for _ in range(20):
        _, parts = frames.next()
        for part in parts:
            decodes_or_rejects(part)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30)


@QUICK
@given(msgpack_values)
def test_plain_values_round_trip(value):
    assert wire.decode(wire.encode(value)) == value


def test_nesting_past_the_unpackers_limit_is_a_decode_error_not_a_crash():
    assert decodes_or_rejects(wire.encode_frame("n", "", [(wire.TELL, "a", "b", 1, None)])) is not None
    nested = wire.decode(b"\x91" * 1000 + b"\xc0")  # within the unpacker's limit: a value
    assert isinstance(nested, list)
    for depth in (5000, 100_000):
        with pytest.raises(wire.DecodeError):
            wire.decode(b"\x91" * depth + b"\xc0")
    with pytest.raises(wire.DecodeError):
        wire.decode(b"\xdd\xff\xff\xff\xff")  # an array claiming 4 billion items, with none
    with pytest.raises(wire.DecodeError):
        wire.decode(b"\xdb\xff\xff\xff\xff" + b"a" * 10)  # a 4 GB string, 10 bytes given
    with pytest.raises(wire.DecodeError) as oversize:
        wire.decode(b"\xc0" * 100, max_bytes=10)
    assert oversize.value.reason == "oversize"


def test_floats_that_are_not_numbers_travel_as_floats():
    value = wire.decode(wire.encode([math.nan, math.inf]))
    assert math.isnan(value[0]) and value[1] == math.inf


# --------------------------------------------------------------------------- committed entries


def apply_hostile_entries(seed: int, count: int) -> None:
    frames = HostileFrames(seed)
    state = ControlState()
    index = 0
    for _ in range(count):
        index += 1
        choice = frames.rng.random()
        if choice < 0.2:
            data = frames.rng.randbytes(frames.rng.randrange(64))
        else:
            command = frames._random_record(depth=0)
            if choice < 0.5:
                command = ClientCommand(frames._string(), frames.rng.randrange(5), command)
            elif choice < 0.6:
                command = Batch([command, frames._random_record(depth=0)])
            try:
                data = wire.encode(command)
            except wire.EncodeError:
                continue
        state.apply(index, data)  # must never raise
    state.to_snapshot()  # and the state it reached must still snapshot


@QUICK
@given(st.integers(0, 2**32))
def test_any_committed_entry_is_applied_without_raising(seed):
    apply_hostile_entries(seed, 30)


def test_every_record_class_is_reachable_by_the_generator():
    frames = HostileFrames(7)
    seen = {type(frames._random_record(0)) for _ in range(5000)}
    assert seen == set(RECORD_CLASSES)


# --------------------------------------------------------------------------- make fuzz


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
@LONG
@given(st.binary(max_size=65_536))
def test_long_random_bytes(data):
    decodes_or_rejects(data)


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
@LONG
@given(mutations())
def test_long_mutated_frames(mutation):
    decodes_or_rejects(mutate(*mutation))


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
@LONG
@given(mutations(COMPRESSED_FRAMES))
def test_long_mutated_compressed_frames(mutation):
    decodes_or_rejects(mutate(*mutation))


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
@settings(max_examples=2_000, deadline=None)
@given(st.integers(0, 2**32))
def test_long_hostile_frames_and_entries(seed):
    frames = HostileFrames(seed)
    for _ in range(200):
        for part in frames.next()[1]:
            decodes_or_rejects(part)
    apply_hostile_entries(seed, 200)
