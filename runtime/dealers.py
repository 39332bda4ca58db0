"""The outbound side of a node's transport: one DEALER per peer endpoint, each watched by a
socket monitor. Transport thread only (runtime/transport.py owns the asks and listeners).

Rules of this module:

* A DEALER is made on first use (``dealer``): the transport's socket options, reconnects every
  50 ms backing off to 250 ms (a peer back up is reached in 250 ms, not libzmq's 1 s), the CURVE
  client options with the endpoint's server key. Both sockets are on the transport's poller.
* ``drain(monitor)`` reads every event a monitor holds (a monitor that is not read blocks
  libzmq's I/O thread once its queue is full) and says what the transport must act on: the
  connection found down (the first DISCONNECTED or CONNECT_RETRIED since it was up: ``DOWN``),
  or its CURVE handshake failed (the reason; the socket is closed, and a next message shakes
  hands again).
* A peer unreachable for ``DEAD_PEER_CLOSE_S`` has its DEALER closed, and what was queued for it
  dropped (counted as ``peer_sockets_closed``): its retries would otherwise wake the transport
  a few times a second and hold descriptors for good, for every peer a long-lived node ever
  talked to (400 dead peers cost a quarter of a core and 1,040 descriptors). A later send to it
  opens a fresh one.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from runtime.security import CurveKeys

DEAD_PEER_CLOSE_S = 60.0
DOWN = "down"
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_WATCHED_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | _HANDSHAKE_FAILED


class OutboundConnections:
    def __init__(self, make_socket: Callable[[int], zmq.Socket], poller: zmq.Poller, curve: CurveKeys | None,
                 server_keys: dict[str, bytes], counters: collections.Counter) -> None:
        self._make_socket, self._poller, self._curve = make_socket, poller, curve
        self._server_keys, self._counters = server_keys, counters
        self.dealers: dict[str, zmq.Socket] = {}
        self.monitors: dict[zmq.Socket, str] = {}  # monitor socket -> the endpoint it watches
        self.unreachable: dict[str, float] = {}  # endpoints whose connection is down -> since when

    def dealer(self, endpoint: str) -> zmq.Socket:
        """The DEALER to ``endpoint``, made if there is none; raises zmq.ZMQError for an
        endpoint libzmq refuses (one from the network once stopped a master's Raft loop)."""
        sock = self.dealers.get(endpoint)
        if sock is None:
            sock = self._make_socket(zmq.DEALER)
            sock.setsockopt(zmq.RECONNECT_IVL, 50)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 250)
            monitor = sock.get_monitor_socket(_WATCHED_EVENTS)
            if self._curve is not None:
                self._curve.client_options(sock, self._server_keys.get(endpoint))
            try:
                sock.connect(endpoint)
            except zmq.ZMQError:
                monitor.close(linger=0)
                sock.close(linger=0)
                raise
            self.dealers[endpoint] = sock
            self.monitors[monitor] = endpoint
            self._poller.register(sock, zmq.POLLIN)
            self._poller.register(monitor, zmq.POLLIN)
        return sock

    def endpoint_of(self, sock: zmq.Socket) -> str:
        return next((endpoint for endpoint, known in self.dealers.items() if known is sock), "?")

    def drain(self, monitor: zmq.Socket) -> tuple[str, str | None]:
        """The monitor's endpoint, and what the transport must act on: ``DOWN``, a handshake
        failure's reason, or None."""
        endpoint = self.monitors[monitor]
        news = None
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return endpoint, news
            if event == zmq.EVENT_CONNECTED:
                self.unreachable.pop(endpoint, None)
            elif event & _HANDSHAKE_FAILED:
                self.close(endpoint)  # (only AUTH is the ZAP's "no")
                return endpoint, "refused_our_key" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "handshake_broke_off"
            elif endpoint not in self.unreachable:
                self.unreachable[endpoint] = time.monotonic()
                news = DOWN
            elif time.monotonic() - self.unreachable[endpoint] > DEAD_PEER_CLOSE_S:
                self._counters["peer_sockets_closed"] += 1
                del self.unreachable[endpoint]
                self.close(endpoint)
                return endpoint, news

    def close(self, endpoint: str) -> None:
        sock = self.dealers.pop(endpoint)
        monitor = next(known for known, watched in self.monitors.items() if watched == endpoint)
        del self.monitors[monitor]
        sock.disable_monitor()
        for closing in (sock, monitor):
            self._poller.unregister(closing)
            closing.close(linger=0)

    def close_all(self) -> None:
        for sock in (*self.monitors, *self.dealers.values()):
            sock.close(linger=0)
        self.dealers, self.monitors = {}, {}
