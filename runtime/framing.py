"""A node's frame codec: protocols/wire.py's pure functions with this node's limits, and the
counts of what compression did.

Rules: the transport makes one per node and calls it on its own thread only (the counters are
the node's). Frames and events of ``compress_min_bytes`` and more go compressed when that saves
an eighth (0: never); whatever comes in is decompressed within ``max_frame_bytes`` first.
Counted: ``frames_compressed_out``/``_in`` and ``compression_saved_bytes_out``/``_in`` (raw
size less wire size); a frame that does not decompress is a DecodeError as any other, counted
by the transport as ``bad_frames_<reason>``.
"""

from __future__ import annotations

import collections
from typing import Any

from protocols.wire import DEFAULT_COMPRESS_MIN_BYTES, Frame, compress, decode, decode_frame, decompress, encode, encode_frame


class FrameCodec:
    def __init__(self, max_frame_bytes: int, compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES,
                 counters: collections.Counter | None = None) -> None:
        if compress_min_bytes < 0:
            raise ValueError(f"the compression threshold must be 0 (off) or more bytes, not {compress_min_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self.compress_min_bytes = compress_min_bytes
        self.counters = counters if counters is not None else collections.Counter()

    def encode_frame(self, node_id: str, endpoint: str, envelopes: list[tuple]) -> bytes:
        return self._compressed(encode_frame(node_id, endpoint, envelopes))

    def encode_frames(self, node_id: str, endpoint: str, envelopes: list[tuple]) -> list[tuple[list, bytes]]:
        """``envelopes`` as frames, each with the envelopes it carries: one, or several when
        together they would pass the receiver's cap (``max_frame_bytes``, before compression: it
        bounds what the receiver decodes). Many Raft appends in flight to one follower, each
        within its byte budget, are one batch. Raises EncodeError as ``encode_frame``."""
        raw = encode_frame(node_id, endpoint, envelopes)
        if len(raw) > self.max_frame_bytes and len(envelopes) > 1:
            half = len(envelopes) // 2
            return (self.encode_frames(node_id, endpoint, envelopes[:half])
                    + self.encode_frames(node_id, endpoint, envelopes[half:]))
        return [(envelopes, self._compressed(raw))]

    def encode(self, value: Any) -> bytes:
        return self._compressed(encode(value))

    def decode_frame(self, data: bytes) -> Frame:
        return decode_frame(self._decompressed(data), self.max_frame_bytes)

    def decode(self, data: bytes) -> Any:
        return decode(self._decompressed(data), self.max_frame_bytes)

    def _compressed(self, raw: bytes) -> bytes:
        data = compress(raw, self.compress_min_bytes)
        if data is not raw:
            self.counters["frames_compressed_out"] += 1
            self.counters["compression_saved_bytes_out"] += len(raw) - len(data)
        return data

    def _decompressed(self, data: bytes) -> bytes:
        raw = decompress(data, self.max_frame_bytes)
        if raw is not data:
            self.counters["frames_compressed_in"] += 1
            self.counters["compression_saved_bytes_in"] += len(raw) - len(data)
        return raw
