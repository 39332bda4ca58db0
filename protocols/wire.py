"""The wire format: message records, the envelope, and the one msgpack codec.

Rules of this module:

* It is pure: no sockets, no threads, no clocks. The transport in ``runtime/`` calls it.
* A *record* is a small frozen dataclass registered under a stable tag with ``@record("tag")``.
  On the wire a record is a msgpack array ``[TAG, field values...]`` whose first item ``TAG`` is
  an ext value (code 1) holding the tag; a plain list never starts with one. Records nest inside
  lists, maps and other records, and encoding one costs no nested pack and no new ext object
  (the tag's ext value is made once per class).
* Any other msgpack-native value (None, bool, int, float, str, bytes, list, dict) travels as is.
* A *frame* is one msgpack map ``{"v": VERSION, "n": source node id, "e": source endpoint,
  "m": [envelope, ...]}``: several messages per frame is how the transport batches.
* An *envelope* is ``[kind, source actor, destination actor, correlation id, body]``; the
  source node is the frame's, the destination node is whoever the frame was sent to.
* A frame (or an event) of ``compress_min_bytes`` and more may travel *compressed*: the byte
  0xC1 (the one byte msgpack never uses, so no plain frame starts with it), a codec byte (1:
  zlib, 2: lz4 block), the raw size (4 bytes, big-endian), then the compressed bytes. It is sent
  raw when compressing does not save an eighth. lz4 was chosen by measurement (bench/README.md,
  compression); zlib is the fallback where lz4 is not installed, and every node reads both.
* Decoding untrusted bytes raises only ``DecodeError`` (with a short ``reason`` used as a
  counter name) and never builds a record whose simple-typed fields have the wrong type; a
  compressed frame never expands past the receiver's ``max_bytes`` (a zip bomb is refused as
  ``compressed_oversize``, anything else that does not decompress to its declared size as
  ``bad_compressed``).
"""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

try:
    import lz4.block as lz4_block
except ImportError:  # a dependency; without it frames are compressed with zlib (every node reads both)
    lz4_block = None

VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
# Smaller frames go raw: about where lz4 breaks even on a 1 Gbit/s link (it lost on 56 KiB
# frames there and won on 227 KiB ones); slower links would gain from 16 KiB, but under it are
# the hot path's many small frames (bench/README.md, compression).
DEFAULT_COMPRESS_MIN_BYTES = 64 * 1024

_RECORD_EXT = 1

# Envelope kinds.
TELL = 0
ASK = 1
REPLY = 2
ERROR = 3
KINDS = (TELL, ASK, REPLY, ERROR)

Address = tuple[str, str]
"""(node_id, actor_name): names an actor anywhere."""


class DecodeError(Exception):
    """Bytes from the network that are not a valid frame; ``reason`` is a counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EncodeError(Exception):
    """A value that cannot be put on the wire (not msgpack-native and not a record)."""


# --------------------------------------------------------------------------- records

_tag_to_class: dict[str, type] = {}
_class_to_tag: dict[type, str] = {}


def _expected_types(annotation: Any) -> tuple[type, ...] | None:
    """The types a field's value may have on the wire, or None to accept anything."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_expected_types(arg) for arg in typing.get_args(annotation)]
        if any(part is None for part in parts):
            return None
        return tuple(t for part in parts for t in part)
    if annotation is type(None) or annotation is None:
        return (type(None),)
    if annotation is float:
        return (int, float)
    if annotation in (int, str, bytes, bool):
        return (annotation,)
    if annotation in (list, tuple) or origin in (list, tuple):
        return (list, tuple)
    if annotation is dict or origin is dict:
        return (dict,)
    if isinstance(annotation, type) and annotation in _class_to_tag:
        return (annotation,)
    return None


def record(tag: str) -> Callable[[type], type]:
    """Register a frozen dataclass as a wire record under ``tag`` (stable across versions)."""

    def register(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            cls = dataclass(frozen=True, slots=True)(cls)
        if tag in _tag_to_class and _tag_to_class[tag] is not cls:
            raise ValueError(f"record tag {tag!r} already registered by {_tag_to_class[tag]!r}")
        _tag_to_class[tag] = cls
        _class_to_tag[cls] = tag
        return cls

    return register


def _field_checks(cls: type) -> tuple[int, tuple[tuple[int, tuple[type, ...]], ...]]:
    """(field count, (field position, allowed types) for every simply typed field)."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    typed = tuple((i, t) for i, f in enumerate(fields) if (t := _expected_types(hints[f.name])) is not None)
    return len(fields), typed


def _field_getter(cls: type) -> Callable[[Any], tuple]:
    names = [f.name for f in dataclasses.fields(cls)]
    if len(names) == 1:
        single = operator.attrgetter(names[0])
        return lambda value: (single(value),)  # attrgetter of one name is no tuple
    if names:
        return operator.attrgetter(*names)
    return lambda value: ()


def tag_of(cls: type) -> str:
    return _class_to_tag[cls]


def is_record(value: Any) -> bool:
    return type(value) in _class_to_tag


# --------------------------------------------------------------------------- codec


class _RecordMarker:
    """What a record's tag decodes to: the class and how to build one from its decoded list
    ``[marker, field, ...]`` (count and type checks included), made once per tag."""

    __slots__ = ("cls", "tag", "build")

    def __init__(self, cls: type, tag: str) -> None:
        self.cls, self.tag = cls, tag
        self.build = _compile_builder(cls, tag, *_field_checks(cls))


def _compile_builder(cls: type, tag: str, count: int, checks: tuple) -> Callable[[list], Any]:
    """A function checking a decoded record's field count and types, then making the record.

    Decoding makes a record per message, entry and command, so this is the codec's hot path:
    the function is generated once per class (as dataclasses generates ``__init__``) with the
    checks unrolled, and it sets a frozen slotted record's fields through their slot
    descriptors instead of its ``__init__``, whose ``object.__setattr__`` per field costs as
    much again. Only field positions are written into the source; every value comes in
    through the namespace."""
    names = [f.name for f in dataclasses.fields(cls)]
    slots = [cls.__dict__.get(name) for name in names]
    direct = (not hasattr(cls, "__post_init__")
              and all(type(slot) is types.MemberDescriptorType for slot in slots))
    namespace: dict[str, Any] = {"cls": cls, "new": object.__new__, "DecodeError": DecodeError,
                                 "count_error": f"{tag}: %d fields, want {count}",
                                 "type_error": f"{tag}: field of wrong type"}
    lines = ["def build(items):",
             f"    if len(items) != {count + 1}:",
             "        raise DecodeError('bad_shape', count_error % (len(items) - 1))"]
    for position, allowed in checks:
        namespace[f"allowed{position}"] = allowed
        lines += [f"    if not isinstance(items[{position + 1}], allowed{position}):",
                  "        raise DecodeError('bad_shape', type_error)"]
    if direct:
        lines.append("    record = new(cls)")
        for position, slot in enumerate(slots):
            namespace[f"set{position}"] = slot.__set__
            lines.append(f"    set{position}(record, items[{position + 1}])")
        lines.append("    return record")
    else:
        lines.append("    return cls(*items[1:])")
    exec("\n".join(lines), namespace)  # noqa: S102 - source made above from field positions only
    return namespace["build"]


_markers: dict[bytes, _RecordMarker] = {}
# How a record class encodes, made once per class: its tag's ext marker and its field getter.
_encoders: dict[type, tuple[msgpack.ExtType, Callable[[Any], tuple]]] = {}


def _default(value: Any) -> Any:
    cls = type(value)
    encoder = _encoders.get(cls)
    if encoder is None:
        tag = _class_to_tag.get(cls)
        if tag is None:
            if isinstance(value, (set, frozenset)):
                return sorted(value)
            raise EncodeError(f"cannot encode {cls.__name__}: register it with @record")
        encoder = _encoders[cls] = (msgpack.ExtType(_RECORD_EXT, tag.encode()), _field_getter(cls))
    ext, getter = encoder
    return [ext, *getter(value)]


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _RECORD_EXT:
        raise DecodeError("bad_shape", f"unknown ext code {code}")
    marker = _markers.get(data)
    if marker is None:
        cls = _tag_to_class.get(data.decode("utf-8", "replace"))
        if cls is None:
            raise DecodeError("unknown_record", data[:80].decode("utf-8", "replace"))
        marker = _markers[data] = _RecordMarker(cls, _class_to_tag[cls])
    return marker


def _list_hook(items: list) -> Any:
    if items and type(items[0]) is _RecordMarker:
        return items[0].build(items)
    return items


def encode(value: Any) -> bytes:
    """Encode any msgpack-native value or record (records may nest)."""
    try:
        return msgpack.packb(value, default=_default)
    except EncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(str(exc)) from exc


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Any:
    """Decode bytes from anywhere; raises only DecodeError."""
    if len(data) > max_bytes:
        raise DecodeError("oversize", f"{len(data)} bytes > {max_bytes}")
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, list_hook=_list_hook, raw=False, strict_map_key=False)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several types; none may escape
        raise DecodeError("bad_msgpack", type(exc).__name__) from None


# --------------------------------------------------------------------------- compression

COMPRESSED = 0xC1  # msgpack's "never used" byte: a compressed frame's first byte
ZLIB, LZ4 = 1, 2  # codec bytes
_HEADER_BYTES = 6  # COMPRESSED, codec, raw size (4 bytes, big-endian)
_MAX_RAW_BYTES = 2**32 - 1


def _lz4_decompress(body: memoryview, size: int) -> bytes:
    if lz4_block is None:
        raise DecodeError("bad_compressed", "an lz4 frame, and lz4 is not installed here")
    return lz4_block.decompress(body, uncompressed_size=size)  # writes at most ``size`` bytes


def _zlib_decompress(body: memoryview, size: int) -> bytes:
    stream = zlib.decompressobj()
    out = stream.decompress(body, size)  # at most ``size`` bytes, whatever the stream holds
    # Its end may lie just past the last byte asked for: a byte more means it is longer.
    if not stream.eof and stream.decompress(stream.unconsumed_tail, 1):
        raise DecodeError("bad_compressed", "the zlib stream is longer than its declared size")
    if not stream.eof or stream.unused_data:
        raise DecodeError("bad_compressed", "the zlib stream does not end at its declared size")
    return out


_COMPRESSORS: dict[int, Callable[[bytes], bytes]] = {ZLIB: lambda data: zlib.compress(data, 1)}
_DECOMPRESSORS: dict[int, Callable[[memoryview, int], bytes]] = {ZLIB: _zlib_decompress, LZ4: _lz4_decompress}
if lz4_block is not None:
    _COMPRESSORS[LZ4] = lambda data: lz4_block.compress(data, store_size=False)
DEFAULT_CODEC = LZ4 if lz4_block is not None else ZLIB


def compress(data: bytes, min_bytes: int, codec: int = DEFAULT_CODEC) -> bytes:
    """``data`` compressed (COMPRESSED, codec, raw size, body), or ``data`` itself when it is
    under ``min_bytes`` (0: never compress) or compressing it does not save an eighth."""
    if not min_bytes or len(data) < min_bytes or len(data) > _MAX_RAW_BYTES:
        return data
    body = _COMPRESSORS[codec](data)
    if _HEADER_BYTES + len(body) > len(data) - len(data) // 8:
        return data
    return b"".join((bytes((COMPRESSED, codec)), len(data).to_bytes(4, "big"), body))


def decompress(data: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """The raw bytes of a compressed frame (``data`` itself when it is not compressed), never
    more than ``max_bytes`` of them; raises only DecodeError."""
    if not data or data[0] != COMPRESSED:
        return data
    if len(data) < _HEADER_BYTES:
        raise DecodeError("bad_compressed", "header cut short")
    codec, size = data[1], int.from_bytes(data[2:_HEADER_BYTES], "big")
    if size > max_bytes:
        raise DecodeError("compressed_oversize", f"expands to {size} bytes > {max_bytes}")
    decompressor = _DECOMPRESSORS.get(codec)
    if decompressor is None:
        raise DecodeError("bad_compressed", f"unknown codec {codec}")
    if size == 0:  # never sent (an empty frame is not compressed), and zlib's 0 means "no bound"
        raise DecodeError("bad_compressed", "raw size 0")
    try:
        raw = decompressor(memoryview(data)[_HEADER_BYTES:], size)
    except DecodeError:
        raise
    except Exception as exc:  # zlib.error, LZ4BlockError, MemoryError, ...: none may escape
        raise DecodeError("bad_compressed", type(exc).__name__) from None
    if len(raw) != size:
        raise DecodeError("bad_compressed", f"{len(raw)} bytes, not the {size} declared")
    if raw[0] == COMPRESSED:  # a compressed frame holds a plain one: no layers of bombs
        raise DecodeError("bad_compressed", "compressed twice")
    return raw


# --------------------------------------------------------------------------- frames


@dataclass(slots=True)
class Envelope:
    """One message inside a frame. ``body`` is a decoded record or plain value."""

    kind: int
    source: str
    destination: str
    correlation_id: int
    body: Any


@dataclass(slots=True)
class Frame:
    node_id: str
    endpoint: str
    envelopes: list[Envelope]


def encode_frame(node_id: str, endpoint: str, envelopes: list[tuple]) -> bytes:
    """``envelopes`` are ``(kind, source_actor, destination_actor, correlation_id, body)``."""
    return encode({"v": VERSION, "n": node_id, "e": endpoint, "m": envelopes})


def decode_frame(data: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """Decode (decompressing first if it is compressed) and shape-check a frame; raises only
    DecodeError."""
    value = decode(decompress(data, max_bytes), max_bytes)
    if not isinstance(value, dict):
        raise DecodeError("bad_shape", "frame is not a map")
    if value.get("v") != VERSION:
        raise DecodeError("bad_version", repr(value.get("v"))[:40])
    node_id, endpoint, items = value.get("n"), value.get("e"), value.get("m")
    if not isinstance(node_id, str) or not isinstance(endpoint, str) or not isinstance(items, list):
        raise DecodeError("bad_shape", "frame header")
    envelopes = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 5
            or item[0] not in KINDS
            or not isinstance(item[1], str)
            or not isinstance(item[2], str)
            or not isinstance(item[3], int)
        ):
            raise DecodeError("bad_shape", "envelope")
        envelopes.append(Envelope(*item))
    return Frame(node_id, endpoint, envelopes)


# --------------------------------------------------------------------------- common records


@record("error")
class ErrorRecord:
    """The answer to a message that could not be handled: ``kind`` is a counter-like name."""

    kind: str
    message: str


@record("tick")
class Tick:
    """Told to an actor by the timer service."""

    name: str
    now_ms: int


@record("event")
class Event:
    """A PUB/SUB message as delivered to a subscriber; ``gap`` counts messages missed before it."""

    topic: str
    publisher: str
    seq: int
    body: Any
    gap: int


@record("refused")
class Refused:
    """Told back to the sender of a message that was not delivered: ``reason`` is
    ``mailbox_full`` (the receiver's bounded mailbox is full) or ``unknown_actor``; ``body`` is
    the message refused, so the sender knows which."""

    reason: str
    destination: str
    body: Any


@record("redirect")
class Redirect:
    """Answer of a master that is not the leader: ask ``leader_endpoint`` instead (None: unknown yet)."""

    leader_id: str | None
    leader_endpoint: str | None
