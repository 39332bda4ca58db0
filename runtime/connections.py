"""Inbound connections per peer: how many TCP connections one address may hold open to a ROUTER.

    connections = InboundConnections(router, port, 1000, counters, poller)   # None: no limit, no monitor
    connections.drain()            # on the transport thread, when connections.monitor is readable

Why it is built this way (docs/ARCHITECTURE.md §2):

* A peer is a remote IP address, with or without CURVE. An address is all that is known of a
  connection when it is accepted, and the cost (a file descriptor, buffers) starts there: a raw
  TCP connection that never greets holds its descriptor for libzmq's handshake interval (30 s)
  without ever reaching the ZAP handler, and a CURVE key is known only after the handshake
  (where the ZAP handler already refuses keys it does not know; an attacker's keys cost nothing).
* ZeroMQ has no call that closes one inbound connection of a ROUTER, and closing a descriptor
  libzmq owns breaks libzmq. The ROUTER's socket monitor reports each accepted connection's
  descriptor (EVENT_ACCEPTED) and each closed one's (EVENT_DISCONNECTED). A connection over the
  limit is shut down (``shutdown(2)``) through a duplicate of its descriptor: that acts on the
  connection, not on libzmq's descriptor, so libzmq reads end-of-file, closes it in its own
  time and reports it disconnected. No descriptor of libzmq's is ever closed here. The
  duplicate is made onto a descriptor reserved for it (``dup2``), because a flood is just when
  the process may have none left to give, and a connection that cannot be looked at would be
  neither counted nor refused.
* A monitor event is read after the fact: its descriptor may be closed by then, or already
  reused. So a descriptor counts only while it is a TCP socket whose local port is the ROUTER's
  (never a file, a pipe or an outbound connection), and it is known by the remote address it
  had; an ACCEPTED on a known descriptor replaces the entry. The context has one I/O thread,
  which emits a descriptor's DISCONNECTED before the ACCEPTED of its reuse.
* Before refusing, the peer's entries are checked again (at most once a second per peer): one
  whose descriptor no longer holds that connection is dropped, so a close the monitor did not
  report cannot lock a peer out.
* Refusals are counted (``connections_refused_per_peer_limit``, in /metrics
  ``agentflow_transport_connections_refused_total{reason}``) and logged at most once a minute
  per peer. Everything here is bounded by the connections open: an entry per descriptor.
"""

from __future__ import annotations

import collections
import os
import socket
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from runtime.log import LogThrottle, get_logger

log = get_logger("transport")

RECHECK_S = 1.0  # a peer at its limit has its entries checked again at most this often
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPT_FAILED




class InboundConnections:
    """The inbound connections of one ROUTER bound on ``port``, by peer address; past ``limit``
    per peer a new one is shut down and counted in ``counters``. Its monitor is registered with
    ``poller``; with no ``limit`` there is none. Transport thread only."""

    def __init__(self, router: zmq.Socket, port: int, limit: int | None, counters: collections.Counter,
                 poller: zmq.Poller) -> None:
        self.monitor = router.get_monitor_socket(_EVENTS) if limit else None
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
            # _remote's two descriptors: the one a connection is duplicated onto, and what it holds between uses.
            self._idle = os.open(os.devnull, os.O_RDONLY)
            self._spare = os.dup(self._idle)
        self.port, self.limit, self.counters = port, limit, counters
        self._peer_of: dict[int, tuple[str, tuple]] = {}  # descriptor -> (peer, its remote address)
        self._fds: dict[str, set[int]] = {}  # peer -> its descriptors
        self._checked_s: dict[str, float] = {}  # peer -> when its entries were last checked
        self._log = LogThrottle()

    def stats(self) -> dict[str, int]:
        """Inbound connections open now, and the most one peer holds (what the limit is held to)."""
        return {"open": len(self._peer_of), "busiest_peer": max(map(len, self._fds.values()), default=0)}

    def drain(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = event["event"], int(event["value"])
            if kind == zmq.EVENT_ACCEPTED:
                self._accepted(value)
            elif kind == zmq.EVENT_DISCONNECTED:
                self._forget(value)
            elif kind == zmq.EVENT_ACCEPT_FAILED:  # value: the errno (EMFILE: out of descriptors)
                self.counters["connections_accept_failed"] += 1

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close(linger=0)
            os.close(self._spare)
            os.close(self._idle)

    def _remote(self, fd: int, shut_down_if: tuple | None = None) -> tuple | None:
        """The remote address of the connection ``fd`` is now, if it is one to the ROUTER's port
        (None: closed, a file, a pipe, an outbound connection); shut down if that address is
        ``shut_down_if``. It is looked at through ``_spare`` and let go of at once."""
        try:
            os.dup2(fd, self._spare)
        except OSError:
            return None  # closed already
        try:
            sock = socket.socket(fileno=self._spare)  # detached below: its close would close _spare
        except OSError:
            sock = None  # not a socket
        try:
            if (sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6)
                    or sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != self.port):
                return None
            remote = sock.getpeername()[:2]
            if remote == shut_down_if:
                sock.shutdown(socket.SHUT_RDWR)
            return remote
        except OSError:
            return None  # not connected any more
        finally:
            if sock is not None:
                sock.detach()
            os.dup2(self._idle, self._spare)  # holding the connection would keep it open

    def _accepted(self, fd: int) -> None:
        self._forget(fd)  # a reused descriptor: its earlier connection closed unreported
        remote = self._remote(fd)
        if remote is None:
            return  # gone already: no DISCONNECTED will find an entry either
        peer = remote[0]
        if len(self._fds.get(peer, ())) >= self.limit and self._recount(peer) >= self.limit:
            if self._remote(fd, shut_down_if=remote) == remote:  # still that connection: shut down
                self.counters["connections_refused_per_peer_limit"] += 1
                if self._log.allow(peer):
                    log.warning("refusing connections from %s: it holds %d, the most a peer may "
                                "(--max-connections-per-peer)", peer, len(self._fds[peer]))
            return
        self._peer_of[fd] = (peer, remote)
        self._fds.setdefault(peer, set()).add(fd)

    def _forget(self, fd: int) -> None:
        entry = self._peer_of.pop(fd, None)
        if entry is None:
            return
        fds = self._fds[entry[0]]
        fds.discard(fd)
        if not fds:
            del self._fds[entry[0]]
            self._checked_s.pop(entry[0], None)

    def _recount(self, peer: str) -> int:
        """How many connections ``peer`` holds, its entries checked against the descriptors first
        unless they were checked within RECHECK_S."""
        now = time.monotonic()
        if now - self._checked_s.get(peer, -RECHECK_S) >= RECHECK_S:
            for fd in list(self._fds[peer]):
                if self._remote(fd) != self._peer_of[fd][1]:
                    self._forget(fd)
            if peer in self._fds:
                self._checked_s[peer] = now
        return len(self._fds.get(peer, ()))
