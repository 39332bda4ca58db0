"""Hostile frames: what an attacker, a buggy peer or a flaky network may send a node.

``HostileFrames(seed).next()`` returns ``(category, parts)``: the parts of one ZeroMQ message
for a node's ROUTER, drawn (seeded, reproducible) from these categories:

* ``random``: random bytes, of any length up to a few KB;
* ``mutated``: a real frame (a corpus of every kind of request a node takes) with bytes
  flipped, cut, duplicated or spliced;
* ``record``: a well-formed frame whose body is any registered record with field values of
  the right type or not (wrong types, huge or negative integers, NaN, long strings, nested
  records), sent to any actor, as a tell or an ask;
* ``value``: a well-formed frame whose body is a random msgpack value (deep nesting, big maps);
* ``header``: msgpack containers and strings whose length header claims gigabytes, unknown
  ext codes and record tags, wrong envelope shapes, wrong versions;
* ``parts``: a message of the wrong number of parts;
* ``compressed``: a real or mutated frame compressed (zlib or lz4), honestly (so hostile bytes
  reach the codec through decompression) or not: a bomb, a wrong size, an unknown codec, a cut
  or flipped body;
* ``replay``: a real frame sent again unchanged (the replayed and reordered messages of a peer).

Safety: strings that may end up in a task's shell ``command`` come from a short list of
harmless commands, and workers under fuzz run with an empty PATH (see test_node_fuzz), since a
node without CURVE keys (as here) runs what any peer asks.
"""

from __future__ import annotations

import dataclasses
import math
import random
import types
import typing
import zlib
from typing import Any

import lz4.block

import msgpack

import protocols.control  # noqa: F401  (every module that registers records)
import protocols.agents  # noqa: F401
import protocols.locks  # noqa: F401
import protocols.overview  # noqa: F401
import protocols.queue  # noqa: F401
import protocols.raft  # noqa: F401
import protocols.registry  # noqa: F401
import protocols.tasks  # noqa: F401
import protocols.workflow_table  # noqa: F401
from protocols import wire
from protocols.control import ClientCommand, Propose, Read, StatusQuery, SubmitWorkflowRequest, WorkflowStatusRequest
from protocols.workflow_spec import TaskNode, Workflow
from protocols.locks import Acquire, LockCall, LockShow, Release
from protocols.names import (AGENT_HOST_ACTOR, AGENTS_ACTOR, LOCK_ACTOR, OBSERVER_ACTOR, QUEUE_ACTOR, RAFT_ACTOR,
                             REGISTRY_ACTOR, SCHEDULER_ACTOR, WORKER_ACTOR)

ACTORS = (RAFT_ACTOR, SCHEDULER_ACTOR, QUEUE_ACTOR, REGISTRY_ACTOR, LOCK_ACTOR, WORKER_ACTOR, AGENTS_ACTOR,
          AGENT_HOST_ACTOR, OBSERVER_ACTOR, "nobody", "")
SAFE_COMMANDS = ("true", "exit 3", ":", "echo fuzz")
CATEGORIES = {"random": 2, "mutated": 4, "record": 6, "value": 2, "header": 2, "parts": 1, "replay": 1,
              "compressed": 2}
# 8 MiB of zeros in a few KB: bombs for the compressed category (made once).
BOMBS = {wire.ZLIB: zlib.compress(bytes(8 << 20), 9), wire.LZ4: lz4.block.compress(bytes(8 << 20), store_size=False)}
RECORD_CLASSES = [wire._tag_to_class[tag] for tag in sorted(wire._tag_to_class)]
# Each record class's fields and their annotations, worked out once.
_FIELDS = {cls: [(f.name, typing.get_type_hints(cls)[f.name]) for f in dataclasses.fields(cls)]
           for cls in RECORD_CLASSES}


def corpus() -> list[bytes]:
    """Real frames of every kind of request a master or worker serves."""
    messages = [
        (RAFT_ACTOR, StatusQuery()),
        (RAFT_ACTOR, Read("lock", {"key": "fuzz"})),
        (RAFT_ACTOR, Read("members", {})),
        (RAFT_ACTOR, Propose(wire.encode(ClientCommand("fuzz-client", 1, protocols.control.Noop("x"))))),
        (LOCK_ACTOR, LockCall(ClientCommand("fuzz-client", 2, Acquire("fuzz", "fuzzer", 500, {}, 0, False)), 0)),
        (LOCK_ACTOR, LockCall(Release("fuzz", "fuzzer", None, 0), 0)),
        (LOCK_ACTOR, LockShow("fuzz")),
        (SCHEDULER_ACTOR, WorkflowStatusRequest(None, False)),
        (SCHEDULER_ACTOR, SubmitWorkflowRequest(Workflow("wf-fuzz", tasks=[TaskNode("a"), TaskNode("b", dependencies=["a"])]),
                                                "fuzz-client", 3)),
        (RAFT_ACTOR, protocols.raft.Heartbeat("master-2", "master-1", 1, 0, b"")),
        (RAFT_ACTOR, protocols.raft.AppendEntries("master-2", "master-1", 1, 0, 0,
                                                  [protocols.raft.Entry(1, 1, 0, b"\x90")], 1)),
        (RAFT_ACTOR, protocols.raft.RequestVote("master-2", "master-1", 1, 0, 0, True, False)),
        (RAFT_ACTOR, protocols.raft.InstallSnapshot("master-2", "master-1", 1,
                                                    protocols.raft.SnapshotMeta(9, 1, ["master-1", "master-2"], []),
                                                    0, 12, b"\x81\xa1a\x01", False)),
        (RAFT_ACTOR, protocols.raft.SnapshotResponse("master-2", "master-1", 1, 9, 1, 4, False)),
    ]
    return [wire.encode_frame("fuzzer", "", [(wire.ASK, "fuzz", actor, position + 1, body)])
            for position, (actor, body) in enumerate(messages)]


class HostileFrames:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.corpus = corpus()
        self.sent: list[bytes] = []  # recent well-formed frames, for replays
        self._weights = list(CATEGORIES.values())
        self._names = list(CATEGORIES)
        self._correlation = 0

    def next(self) -> tuple[str, list[bytes]]:
        category = self.rng.choices(self._names, self._weights)[0]
        return category, getattr(self, f"_{category}")()

    # ------------------------------------------------------------------ categories

    def _random(self) -> list[bytes]:
        return [self.rng.randbytes(self.rng.choice((0, 1, 2, 8, 30, 200, 3000)))]

    def _mutated(self) -> list[bytes]:
        data = bytearray(self.rng.choice(self.corpus))
        for _ in range(self.rng.randint(1, 6)):
            how = self.rng.random()
            position = self.rng.randrange(len(data)) if data else 0
            if how < 0.4 and data:
                data[position] = self.rng.randrange(256)
            elif how < 0.6:
                del data[position:]
            elif how < 0.8:
                data[position:position] = data[position:position + self.rng.randint(1, 40)]
            else:
                other = self.rng.choice(self.corpus)
                cut = self.rng.randrange(len(other))
                data[position:] = other[cut:]
        return [bytes(data)]

    def _record(self) -> list[bytes]:
        body = self._random_record(depth=0)
        return [self._frame(body)]

    def _value(self) -> list[bytes]:
        rng = self.rng
        shape = rng.random()
        if shape < 0.3:  # nesting past what msgpack's packer allows (511), up to its unpacker's limit
            depth = rng.choice((10, 100, 500, 900, 1500, 5000))
            nested = rng.choice((b"\x91", b"\x81\xa1k", b"\x91\x81\xa1k")) * depth + b"\xc0"
            return [self._frame_bytes(nested)]
        if shape < 0.5:
            start = rng.randrange(10**6)
            body = dict.fromkeys(range(start, start + rng.choice((10, 1000, 20_000))), rng.random())
        else:
            body = self._random_value(depth=0)
        return [self._frame(body)]

    def _header(self) -> list[bytes]:
        rng = self.rng
        choice = rng.randrange(8)
        if choice == 0:  # a container or string claiming up to 4 GB
            head = rng.choice((b"\xdb", b"\xc6", b"\xdd", b"\xdf")) + rng.choice((b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"))
            return [head + rng.randbytes(rng.randrange(64))]
        if choice == 1:  # an unknown ext code
            return [self._frame_raw(msgpack.ExtType(rng.randrange(2, 128), b"x"))]
        if choice == 2:  # an unknown record tag
            return [self._frame_raw([msgpack.ExtType(1, rng.randbytes(rng.randrange(1, 40))), 1, 2])]
        if choice == 3:  # a known tag with the wrong number of fields
            cls = rng.choice(RECORD_CLASSES)
            tag = msgpack.ExtType(1, wire.tag_of(cls).encode())
            return [self._frame_raw([tag, *[self._random_value(2) for _ in range(rng.randrange(12))]])]
        if choice == 4:  # a wrong version, or a header of the wrong types
            header = {"v": rng.choice((0, 2, "1", None, 1)), "n": rng.choice(("x", 1, None, b"x")),
                      "e": rng.choice(("", 2, None)), "m": rng.choice(([], {}, None, "m", [[1, 2]]))}
            return [msgpack.packb(header)]
        if choice == 5:  # envelopes of the wrong shape
            envelope = [rng.choice((0, 1, 2, 3, 4, -1, 2**40, "a")), rng.choice(("a", 1)), rng.choice(ACTORS + (5,)),
                        rng.choice((1, -1, 2**63 - 1, "x", None)), None][: rng.randint(0, 6)]
            return [msgpack.packb({"v": wire.VERSION, "n": "fuzzer", "e": "", "m": [envelope]})]
        if choice == 6:  # a reply or error to an ask nobody made
            kind = rng.choice((wire.REPLY, wire.ERROR))
            return [wire.encode_frame("fuzzer", "", [(kind, "x", "y", rng.randrange(2**62), self._random_value(1))])]
        return [msgpack.packb({"v": wire.VERSION, "n": "f" * rng.choice((1, 1000, 100_000)), "e": "", "m": []})]

    def _parts(self) -> list[bytes]:
        return [self.rng.choice(self.corpus) for _ in range(self.rng.choice((0, 2, 3, 5)))] or [b"", b""]

    def _replay(self) -> list[bytes]:
        return [self.rng.choice(self.sent or self.corpus)]

    def _compressed(self) -> list[bytes]:
        rng = self.rng
        codec = rng.choice((wire.ZLIB, wire.LZ4))
        inner = rng.choice(self.corpus) if rng.random() < 0.5 else self._mutated()[0] or b"\x90"
        size, body = len(inner), wire._COMPRESSORS[codec](inner)  # compressed whatever it saves
        lie = rng.randrange(8)
        if lie == 1:  # a bomb: small on the wire, 8 MiB inside, declaring less or more
            size, body = rng.choice((1000, 1 << 20, 8 << 20, 64 << 20, 2**32 - 1)), BOMBS[codec]
        elif lie == 2:
            size = rng.choice((0, 1, size - 1, size + 1, size * 2, 2**32 - 1))
        elif lie == 3:
            codec = rng.choice((0, 3, 255))
        elif lie == 4:
            body = body[:rng.randrange(len(body) + 1)]
        elif lie == 5 and body:
            flipped = bytearray(body)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            body = bytes(flipped)
        elif lie == 6:
            body = rng.randbytes(rng.randrange(200))
        head = bytes((wire.COMPRESSED, codec)) + size.to_bytes(4, "big")
        return [(head + body)[:rng.choice((1, 3, 6, 10**9))] if lie == 7 else head + body]

    # ------------------------------------------------------------------ building blocks

    def _frame(self, body: Any) -> bytes:
        self._correlation += 1
        kind = self.rng.choice((wire.TELL, wire.ASK, wire.ASK))
        node_id = self.rng.choice(("fuzzer", "master-1", "master-2", "worker-1", f"n{self.rng.randrange(50)}"))
        try:
            frame = wire.encode_frame(node_id, "", [(kind, "fuzz", self.rng.choice(ACTORS), self._correlation, body)])
        except wire.EncodeError:
            frame = self._frame_raw(None)
        if len(self.sent) < 200:
            self.sent.append(frame)
        else:
            self.sent[self.rng.randrange(200)] = frame
        return frame

    def _frame_raw(self, body: Any) -> bytes:
        return msgpack.packb({"v": wire.VERSION, "n": "fuzzer", "e": "",
                              "m": [[wire.ASK, "fuzz", self.rng.choice(ACTORS), 1, body]]}, default=wire._default)

    def _frame_bytes(self, body: bytes) -> bytes:
        """A frame around a body given as msgpack bytes (which msgpack itself would not pack)."""
        head = b"".join(msgpack.packb(item) for item in ("v", wire.VERSION, "n", "fuzzer", "e", "", "m"))
        envelope = b"".join(msgpack.packb(item) for item in (wire.ASK, "fuzz", self.rng.choice(ACTORS), 1))
        return b"\x84" + head + b"\x91\x95" + envelope + body

    def _random_record(self, depth: int) -> Any:
        cls = self.rng.choice(RECORD_CLASSES)
        record = object.__new__(cls)
        for name, annotation in _FIELDS[cls]:
            object.__setattr__(record, name, self._value_for(annotation, depth + 1))
        return record

    def _value_for(self, annotation: Any, depth: int) -> Any:
        """Mostly a value of the annotated type (so the record passes decoding and reaches the
        handler), sometimes anything at all."""
        rng = self.rng
        if rng.random() < 0.2:
            return self._random_value(depth)
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            return self._value_for(rng.choice(typing.get_args(annotation)), depth)
        if annotation is type(None):
            return None
        if annotation is bool:
            return rng.random() < 0.5
        if annotation is int:
            return rng.choice((0, 1, -1, 2, 10, rng.randrange(10**6), 2**31, 2**63 - 1, -(2**63)))
        if annotation is float:
            return rng.choice((0.0, -1.0, 1e300, math.inf, math.nan, rng.random()))
        if annotation is str:
            return self._string()
        if annotation is bytes:
            return rng.randbytes(rng.choice((0, 10, 1000)))
        if annotation in (list, tuple) or origin in (list, tuple):
            return [self._random_value(depth + 1) for _ in range(rng.choice((0, 1, 3, 50)))]
        if annotation is dict or origin is dict:
            return {self._string(): self._random_value(depth + 1) for _ in range(rng.choice((0, 1, 5)))}
        if isinstance(annotation, type) and annotation in wire._class_to_tag and depth < 4:
            return self._random_record(depth)
        return self._random_value(depth)

    def _string(self) -> str:
        rng = self.rng
        choice = rng.random()
        if choice < 0.15:
            return rng.choice(SAFE_COMMANDS)
        if choice < 0.3:
            return rng.choice(("master-1", "worker-1", "raft", "lock", "fuzz", "wf-fuzz", "a", "", "/"))
        if choice < 0.33:
            return "x" * rng.choice((1000, 100_000))
        return "".join(rng.choice("abcdefgh-_/.:0123456789 é") for _ in range(rng.randrange(12)))

    def _random_value(self, depth: int) -> Any:
        rng = self.rng
        kinds = ["none", "bool", "int", "float", "str", "bytes"]
        if depth < 5:
            kinds += ["list", "dict", "record"]
        kind = rng.choice(kinds)
        if kind == "none":
            return None
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "int":
            return rng.choice((0, -1, 2**64 - 1, -(2**63), rng.randrange(-1000, 1000)))
        if kind == "float":
            return rng.choice((math.nan, -math.inf, 0.5, 1e-300))
        if kind == "str":
            return self._string()
        if kind == "bytes":
            return rng.randbytes(rng.randrange(40))
        if kind == "list":
            return [self._random_value(depth + 1) for _ in range(rng.randrange(5))]
        if kind == "dict":
            return {rng.choice((self._string(), rng.randrange(100))): self._random_value(depth + 1)
                    for _ in range(rng.randrange(4))}
        return self._random_record(depth + 1)
