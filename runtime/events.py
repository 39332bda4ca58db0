"""A node's event sockets: one PUB for what it publishes, one SUB for what it follows.

Used by the transport, on its thread only. Rules: each (publisher, topic) pair numbers its events
from 1, so a subscriber counts the events it missed (``Event.gap``); one SUB socket follows every
publisher (a topic filter applies to all of them), connecting to each endpoint once; an event
that does not decode is counted, never raised.
"""

from __future__ import annotations

from typing import Any, Callable

import zmq

from protocols.wire import TELL, DecodeError, EncodeError, Event
from runtime.framing import FrameCodec
from runtime.log import get_logger
from runtime.messages import InboundMessage

log = get_logger("transport")


class EventSockets:
    def __init__(self, node_id: str, pub: zmq.Socket, sub: zmq.Socket, counters, codec: FrameCodec,
                 count_bad: Callable[[str, str, str], None]) -> None:
        self.node_id = node_id
        self.pub, self.sub = pub, sub
        self.counters = counters
        self.codec = codec  # an event's body compresses as a frame does
        self._count_bad = count_bad
        self._pub_seq: dict[str, int] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._subscribers: list[tuple[str, Any]] = []  # (topic prefix, delivery target)
        self._publishers: set[str] = set()  # endpoints the SUB socket is connected to

    def publish(self, topic: str, body: Any) -> None:
        seq = self._pub_seq.get(topic, 0) + 1
        try:
            data = self.codec.encode((self.node_id, seq, body))
        except EncodeError as exc:
            log.warning("cannot publish on %s: %s", topic, exc)
            return
        self._pub_seq[topic] = seq
        try:
            self.pub.send_multipart((topic.encode(), data), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["publish_dropped_hwm"] += 1

    def subscribe(self, pub_endpoint: str, topic: str, target: Any, server_key: bytes | None = None) -> None:
        if (topic, target) not in self._subscribers:
            if all(known != topic for known, _ in self._subscribers):
                self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
            self._subscribers.append((topic, target))
        if pub_endpoint not in self._publishers:
            self._publishers.add(pub_endpoint)
            if server_key is not None:  # a connection uses the option's value at the time it connects
                self.sub.curve_serverkey = server_key
            self.sub.connect(pub_endpoint)

    def disconnect(self, pub_endpoint: str) -> None:
        if pub_endpoint in self._publishers:
            self._publishers.discard(pub_endpoint)
            try:
                self.sub.disconnect(pub_endpoint)
            except zmq.ZMQError:
                pass

    def drain(self, limit: int) -> list[tuple[Any, InboundMessage]]:
        """The events waiting on the SUB socket, each paired with every target that follows it."""
        out = []
        for _ in range(limit):
            try:
                parts = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                topic = parts[0].decode()
                publisher, seq, body = self.codec.decode(parts[1])
                if len(parts) != 2 or not isinstance(publisher, str) or not isinstance(seq, int):
                    raise DecodeError("bad_shape", "event")
            except (DecodeError, UnicodeDecodeError, ValueError, TypeError, IndexError):
                self._count_bad("pub", "bad_event", "")
                continue
            last = self._last_seq.get((publisher, topic))
            gap = 0 if last is None else max(0, seq - last - 1)
            if gap:
                self.counters["event_gaps"] += gap
            self._last_seq[(publisher, topic)] = seq
            message = InboundMessage(TELL, None, 0, Event(topic, publisher, seq, body, gap))
            out.extend((target, message) for prefix, target in self._subscribers if topic.startswith(prefix))
        return out
