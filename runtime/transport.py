"""The transport: the one thread that owns every ZeroMQ socket of a node.

Rules of this module (docs/ARCHITECTURE.md §2 and §5 rule 7):

* ZeroMQ sockets are not thread-safe, so this thread alone creates, uses and closes them: a
  ROUTER bound for inbound messages, one DEALER per peer endpoint for outbound ones, a PUB for
  events and a SUB for subscriptions; the ROUTER's monitor counts its connections per peer address
  and closes those past the limit (runtime/connections.py). Every socket has LINGER 0.
* Its public face is ``send`` (a tell), ``ask``, ``reply``, ``publish``, ``subscribe`` and
  ``call`` (run a function on this thread), callable from any thread: each puts one item on a
  lock-free queue and writes a wake-up byte on a pipe only when the queue turns from empty to
  non-empty (one wake-up per burst).
* It knows the node's actors only through a directory (actor name -> delivery target) and
  counts into the node's counters. A tenant's message (CURVE) reaches an actor only if the
  node's ``admit(destination, message)`` lets it; a tenant's frame teaches no endpoint or key.
* It drains sockets and the outbound queue without blocking, packs up to ``MAX_BATCH``
  envelopes per frame, and hands each local actor one batch per wake-up.
* Bytes from the network never raise out of it: bad frames are counted by reason, logged once
  per peer per minute, and dropped; an ask for an actor that is not here is answered with an
  ``unknown_actor`` error record; an answer counts only on the connection its ask went out on.
* It runs the node's timers and fails asks past their deadline: nothing else sleeps in a loop.
* It watches each outbound connection (a socket monitor): when a peer's connection drops or is
  refused, the asks waiting on that peer fail at once with ``peer_unreachable`` (a dead process
  is known in milliseconds, not at a timeout), and so do new asks until it reconnects; listeners
  hear of the drop (``on_disconnect``). Tells are queued and delivered on reconnection, unless
  the peer stays unreachable for a minute (runtime/dealers.py: its socket is closed).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import zmq

from protocols.wire import (
    ASK,
    ERROR,
    REPLY,
    TELL,
    DecodeError,
    EncodeError,
    ErrorRecord,
    Refused,
    Tick,
)
from runtime.connections import InboundConnections
from runtime.dealers import DOWN, OutboundConnections
from runtime.faults import FaultInjector
from runtime.framing import FrameCodec
from runtime.future import AskTimeout, RemoteError, settle
from runtime.log import LogThrottle, get_logger
from runtime.events import EventSockets
from runtime.messages import InboundMessage
from runtime.security import EVENTS_DOMAIN, CurveKeys, Gatekeeper
from runtime.timers import TimerQueue
from runtime.wakeup import WakePipe

if TYPE_CHECKING:
    from runtime.future import Future

log = get_logger("transport")

MAX_BATCH = 256  # envelopes per frame; bounds a frame's size and one actor hand-off's work
DRAIN_LIMIT = 4096  # frames read from one socket per wake-up, so one busy peer cannot starve the rest

# Outbound work items (first element says what to do).
_TO_PEER = 0  # (_TO_PEER, endpoint, envelope)
_TO_ROUTE = 1  # (_TO_ROUTE, routing_id, envelope)
_PUBLISH = 2  # (_PUBLISH, topic, body)
_CALL = 3  # (_CALL, fn): run fn on the transport thread
_ASK = 4  # (_ASK, endpoint, envelope, correlation_id, future)

_correlation_ids = itertools.count(1)


def _bind(sock: zmq.Socket, host: str, port: int) -> int:
    """Bind on ``port``, or on a free port when it is 0; returns the port bound."""
    if port:
        sock.bind(f"tcp://{host}:{port}")
        return port
    return sock.bind_to_random_port(f"tcp://{host}")


class Transport(threading.Thread):
    """``targets`` is the directory of local actors (name -> delivery target: an object with
    ``deliver(messages)``), ``counters`` where to count; both are the owner's and stay live.
    ``pub_port`` None means PORT+100 for a fixed ``port``, any free port otherwise."""

    def __init__(self, node_id: str, host: str, port: int, pub_port: int | None, codec: FrameCodec,
                 targets: dict[str, Any], counters: collections.Counter, curve: CurveKeys | None = None,
                 advertise_host: str | None = None, advertise_port: int | None = None,
                 max_connections_per_peer: int | None = None) -> None:
        super().__init__(name=f"agentflow-transport-{node_id}", daemon=True)
        self.node_id = node_id
        self.targets = targets
        self.counters = counters
        self.peers: dict[str, str] = {}  # node id -> endpoint, learned from frames
        self.codec = codec  # frames' size limit and compression (runtime/framing.py)
        self._context = zmq.Context()
        self.curve = curve
        # endpoint -> the CURVE key its node authenticated with (runtime/security.py)
        self.server_keys: dict[str, bytes] = {}
        self.gatekeeper = Gatekeeper(self._context, curve) if curve is not None else None
        self.admit: Callable[[str, InboundMessage], bool] = lambda destination, message: False  # the Node's gate
        self.faults = FaultInjector.from_environment(node_id, counters)  # None unless a test configures faults
        self._route_peers: dict[bytes, tuple[str, str]] = {}  # with faults: route -> (node id, endpoint)
        self._outbox: collections.deque = collections.deque()
        self._wake_pending = False
        self._wake_pipe = WakePipe()
        self._running = True
        self._asks: dict[int, Future] = {}
        self._ask_endpoints: dict[int, str] = {}  # correlation id -> endpoint, for asks in flight
        self._ask_deadlines: list[tuple[float, int]] = []
        self._timers = TimerQueue()
        self._end_of_round_hooks: list[Callable[[], None]] = []
        self._disconnect_listeners: list[Callable[[str], None]] = []
        self._bad_frame_log = LogThrottle()
        self._poller = zmq.Poller()
        self.outbound = OutboundConnections(self._socket, self._poller, curve, self.server_keys, counters)

        self._router = self._socket(zmq.ROUTER)
        self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # libzmq drops a frame over this hard limit unread, with its connection; one over the cap is "oversize".
        self._router.setsockopt(zmq.MAXMSGSIZE, codec.max_frame_bytes * 2 + 1024)
        fixed_port = bool(port)
        if curve is not None:
            curve.server_options(self._router)
        port = _bind(self._router, host, port)
        self.connections = InboundConnections(self._router, port, max_connections_per_peer, counters, self._poller)
        # The endpoint in every frame is where peers answer: the advertised address when the
        # bound one is not reachable from them (a wildcard bind, NAT, a pod behind a name).
        self.endpoint = f"tcp://{advertise_host or host}:{advertise_port or port}"
        pub, sub = self._socket(zmq.PUB), self._socket(zmq.SUB)
        if curve is not None:
            curve.server_options(pub, EVENTS_DOMAIN)
            curve.client_options(sub)
        pub_port = _bind(pub, host, pub_port if pub_port is not None else (port + 100 if fixed_port else 0))
        self.pub_endpoint = f"tcp://{advertise_host or host}:{pub_port}"
        self._events = EventSockets(node_id, pub, sub, counters, codec, self._count_bad)
        self._sub = sub
        self._poller.register(self._router, zmq.POLLIN)
        self._poller.register(sub, zmq.POLLIN)
        self._poller.register(self._wake_pipe.fileno, zmq.POLLIN)

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        return sock

    # ------------------------------------------------------------------ from any thread

    def _submit(self, item: tuple) -> None:
        """Queue work for the transport thread; wakes it once per empty-to-non-empty change."""
        self._outbox.append(item)
        if not self._wake_pending and threading.get_ident() != self.ident:
            self._wake_pending = True
            self._wake_pipe.wake()

    def send(self, endpoint: str, destination: str, body: Any, source: str = "") -> None:
        """Tell ``body`` to the actor ``destination`` of the node at ``endpoint``."""
        self._submit((_TO_PEER, endpoint, (TELL, source, destination, 0, body)))

    def ask(self, endpoint: str, destination: str, body: Any, future: Future, source: str = "") -> None:
        """Ask ``destination`` at ``endpoint``; ``future`` gets the answer, or AskTimeout at its deadline."""
        correlation_id = next(_correlation_ids)
        self._submit((_ASK, endpoint, (ASK, source, destination, correlation_id, body), correlation_id, future))

    def reply(self, route: bytes, destination: str, correlation_id: int, value: Any = None,
              error: ErrorRecord | None = None) -> None:
        """Answer the ask ``correlation_id`` that came in on ``route`` (with ``error`` if given)."""
        kind, body = (REPLY, value) if error is None else (ERROR, error)
        self._submit((_TO_ROUTE, route, (kind, "", destination, correlation_id, body)))

    def publish(self, topic: str, body: Any) -> None:
        """Publish an event; each (publisher, topic) pair has its own sequence numbers."""
        self._submit((_PUBLISH, topic, body))

    def subscribe(self, pub_endpoint: str, topic: str, target: Any) -> None:
        """Deliver events whose topic starts with ``topic`` from ``pub_endpoint`` to ``target``."""
        self.call(lambda: self._subscribe(pub_endpoint, topic, target))

    def call(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the transport thread, in order with the messages queued around it."""
        self._submit((_CALL, fn))

    def stop(self, timeout_s: float = 5.0) -> None:
        self._running = False
        self._wake_pending = False
        self.call(lambda: None)
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout_s)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            while self._running:
                events = self._poller.poll(self._poll_timeout_ms())
                for sock, _ in events:
                    if sock is self._router:
                        self._drain_router()
                    elif sock is self._sub:
                        for target, event in self._events.drain(DRAIN_LIMIT):
                            self._deliver(target, [event])
                    elif sock == self._wake_pipe.fileno:
                        self._wake_pipe.drain()
                    elif sock in self.outbound.monitors:
                        self._drain_monitor(sock)
                    elif sock is self.connections.monitor:
                        self.connections.drain()
                    else:
                        self._drain_dealer(sock)
                if self.faults is not None:
                    self.faults.refresh()
                self._flush_outbox()
                self._run_due_timers()
                if self._end_of_round_hooks:
                    for hook in self._end_of_round_hooks:
                        self._run_hook(hook)
                    self._flush_outbox()
        except Exception:
            log.exception("transport loop failed; node %s stops serving", self.node_id)
        finally:
            self._close()

    def _close(self) -> None:
        if self.is_alive() and threading.current_thread() is self:
            # Run what was queued before the stop (pinned actors' on_stop closes their files).
            try:
                self._flush_outbox()
            except Exception:
                log.exception("flushing the outbox at shutdown failed")
        for future in list(self._asks.values()):
            future.set_exception(AskTimeout("node stopped"))
        self._asks.clear()
        for sock in (self._router, self._events.pub, self._sub):
            sock.close(linger=0)
        self.outbound.close_all()
        self.connections.close()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self._context.term()
        self._wake_pipe.close()

    def _poll_timeout_ms(self) -> int | None:
        if self._outbox:
            return 0
        dues = [self._timers.next_due(), self._ask_deadlines[0][0] if self._ask_deadlines else None,
                self.faults.next_due() if self.faults is not None else None]
        due = min((d for d in dues if d is not None), default=None)
        return None if due is None else max(0, int((due - time.monotonic()) * 1000) + 1)

    # ------------------------------------------------------------------ inbound

    def _drain_router(self) -> None:
        secure = self.curve is not None
        for _ in range(DRAIN_LIMIT):
            try:
                # With CURVE, the frame object also says which key its sender authenticated with.
                parts = self._router.recv_multipart(zmq.NOBLOCK, copy=not secure)
            except zmq.Again:
                break
            route = parts[0] if not secure else parts[0].bytes
            if len(parts) != 2:
                self._count_bad(route.hex(), "bad_frame_count", f"{len(parts) - 1} frames")
                continue
            data, key = (parts[1].bytes, parts[1].get("User-Id").encode()) if secure else (parts[1], None)
            self._handle_frame(data, route, key)

    def _drain_dealer(self, sock: zmq.Socket) -> None:
        if sock.closed:
            return  # its monitor's events of this same round closed it (runtime/dealers.py)
        for _ in range(DRAIN_LIMIT):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(parts) != 1:
                self._count_bad(self.outbound.endpoint_of(sock), "bad_frame_count", "")
                continue
            self._handle_frame(parts[0], None, via=sock)

    def _handle_frame(self, data: bytes, route: bytes | None, peer_key: bytes | None = None,
                      via: zmq.Socket | None = None) -> None:
        """Decode one frame and hand each local actor its part of it as one batch (``via``: its DEALER)."""
        counters = self.counters
        counters["frames_in"] += 1
        counters["bytes_in"] += len(data)
        try:
            frame = self.codec.decode_frame(data)
        except DecodeError as exc:
            self._count_bad(route.hex() if route else "?", exc.reason, exc.detail)
            return
        if self.faults is not None:
            if self.faults.drops_from(frame.node_id, frame.endpoint):
                counters["fault_dropped_in"] += len(frame.envelopes)
                return
            if route is not None:
                self._route_peers[route] = (frame.node_id, frame.endpoint)
        tenant = self.gatekeeper.tenant_of(peer_key) if peer_key is not None else None
        if frame.endpoint and tenant is None:  # a client without a node of its own listens nowhere
            self.peers[frame.node_id] = frame.endpoint
            if peer_key is not None:
                self.server_keys[frame.endpoint] = peer_key
        counters["msgs_in"] += len(frame.envelopes)
        batches: dict[Any, list[InboundMessage]] = {}
        for env in frame.envelopes:
            kind = env.kind
            if kind == REPLY or kind == ERROR:  # from the DEALER its ask went out on only: ids are guessable
                asked = self._ask_endpoints.get(env.correlation_id)
                if asked is not None and via is not None and self.outbound.dealers.get(asked) is via:
                    settle(self._pop_ask(env.correlation_id), kind, env.body)
                else:
                    counters["late_replies" if asked is None else "misrouted_replies"] += 1
                continue
            target = self.targets.get(env.destination)
            if target is None:
                counters["unknown_actor"] += 1
                if kind == ASK and route is not None:
                    self.reply(route, env.source, env.correlation_id, error=ErrorRecord(
                        "unknown_actor", f"no actor {env.destination!r} on {self.node_id}"))
                elif env.source and frame.endpoint:
                    # Sent anonymously (no source), so a Refused that finds nobody is not refused back.
                    self.send(frame.endpoint, env.source, Refused("unknown_actor", env.destination, env.body))
                continue
            message = InboundMessage(kind, (frame.node_id, env.source), env.correlation_id, env.body, route, None, tenant)
            if tenant is not None and not self.admit(env.destination, message):
                continue  # refused (and answered) by the node's gate
            batch = batches.get(target)
            if batch is None:
                batches[target] = [message]
            else:
                batch.append(message)
        for target, messages in batches.items():
            self._deliver(target, messages)

    def add_end_of_round_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` on this thread once per loop round, after the round's messages, calls and
        timers: a pinned actor does its expensive part (a disk write) once for all of them."""
        self.call(lambda: self._end_of_round_hooks.append(hook))

    def on_disconnect(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(endpoint)`` on this thread each time an outbound connection drops."""
        self.call(lambda: self._disconnect_listeners.append(listener))

    def _run_hook(self, hook: Callable[[], None]) -> None:
        try:
            hook()
        except Exception:
            self.counters["actor_errors"] += 1
            log.exception("an end-of-round hook or a disconnect listener failed")

    def _deliver(self, target: Any, messages: list[InboundMessage]) -> None:
        """Hand a batch to an actor; a pinned actor's failure is counted, never fatal to the loop."""
        try:
            target.deliver(messages)
        except Exception:
            self.counters["actor_errors"] += 1
            log.exception("an actor failed on a batch of %d messages", len(messages))

    def _count_bad(self, peer: str, reason: str, detail: str) -> None:
        self.counters[f"bad_frames_{reason}"] += 1
        if self._bad_frame_log.allow((peer, reason)):
            log.warning("dropped a bad frame from peer %s: %s %s", peer, reason, detail[:120])

    def _subscribe(self, pub_endpoint: str, topic: str, target: Any) -> None:
        key = self.server_keys.get(pub_endpoint, self.curve.server_key) if self.curve is not None else None
        self._events.subscribe(pub_endpoint, topic, target, key)

    def unsubscribe_publisher(self, pub_endpoint: str) -> None:
        """Stop receiving from ``pub_endpoint`` (a publisher that left)."""
        self.call(lambda: self._events.disconnect(pub_endpoint))

    # ------------------------------------------------------------------ outbound

    def flush(self) -> None:
        """Send the network messages queued now (transport thread only: a pinned actor about to
        block on a disk write). Queued calls stay queued, in order, for the loop to run: running
        them here would re-enter actors in the middle of their own handlers."""
        if threading.current_thread() is self:
            self._drain_outbox(run_calls=False)

    def _flush_outbox(self) -> None:
        # Clear the flag before draining: a producer that appends after this point wakes us again.
        self._wake_pending = False
        self._drain_outbox(run_calls=True)

    def _drain_outbox(self, run_calls: bool) -> None:
        """Send everything queued, grouped by socket; run queued calls in order, or keep them
        queued (``run_calls`` False)."""
        outbox = self._outbox
        to_peers: dict[str, list] = {}
        to_routes: dict[bytes, list] = {}
        kept_calls = []
        while outbox:
            item = outbox.popleft()
            if item[0] != _CALL:
                self._queue_for_send(item, to_peers, to_routes)
            elif run_calls:
                # What was queued before the call leaves before anything the call queues (a pinned
                # actor may even flush from inside it), so every peer sees messages in order.
                self._send_grouped(to_peers, to_routes)
                try:
                    item[1]()
                except Exception:
                    log.exception("transport call failed")
            else:
                kept_calls.append(item)
            if run_calls and not outbox:
                # Send what we have before looking again, so a burst is packed but not delayed.
                self._send_grouped(to_peers, to_routes)
        self._send_grouped(to_peers, to_routes)
        outbox.extendleft(reversed(kept_calls))

    def _queue_for_send(self, item: tuple, to_peers: dict[str, list], to_routes: dict[bytes, list]) -> None:
        """Group one network item by socket (publications go out at once)."""
        op = item[0]
        if op == _TO_PEER:
            to_peers.setdefault(item[1], []).append(item[2])
        elif op == _ASK:
            _, endpoint, envelope, correlation_id, future = item
            if future.done():
                return  # timed out before it was sent
            if endpoint in self.outbound.unreachable:
                future.set_exception(RemoteError("peer_unreachable", f"no connection to {endpoint}"))
                return
            self._asks[correlation_id] = future
            self._ask_endpoints[correlation_id] = endpoint
            if future.deadline is not None:
                heapq.heappush(self._ask_deadlines, (future.deadline, correlation_id))
            to_peers.setdefault(endpoint, []).append(envelope)
        elif op == _TO_ROUTE:
            to_routes.setdefault(item[1], []).append(item[2])
        else:
            self._events.publish(item[1], item[2])

    def _send_grouped(self, to_peers: dict[str, list], to_routes: dict[bytes, list]) -> None:
        faults = self.faults
        if faults is not None:
            nodes = {endpoint: node_id for node_id, endpoint in self.peers.items()}
        for endpoint, envelopes in to_peers.items():
            if faults is None or faults.let_through((nodes.get(endpoint, ""), endpoint), endpoint, envelopes):
                try:
                    sock = self.outbound.dealer(endpoint)
                except zmq.ZMQError:  # an endpoint from the network (a Join, a member) libzmq refuses
                    self.counters["send_bad_endpoint"] += len(envelopes)
                    self._fail_asks_to(endpoint, "not an endpoint libzmq takes")
                    continue
                self._send(sock, None, envelopes)
        for route, envelopes in to_routes.items():
            if faults is None or faults.let_through(self._route_peers.get(route, ("", "")), route, envelopes):
                self._send(self._router, route, envelopes)
        to_peers.clear()
        to_routes.clear()

    def _send(self, sock: zmq.Socket, route: bytes | None, envelopes: list) -> None:
        counters = self.counters
        for start in range(0, len(envelopes), MAX_BATCH):
            chunk = envelopes[start:start + MAX_BATCH]
            try:
                frames = self.codec.encode_frames(self.node_id, self.endpoint, chunk)
            except EncodeError as exc:
                # One bad body must not lose the rest of the batch: send the others one by one.
                if len(chunk) > 1:
                    for envelope in chunk:
                        self._send(sock, route, [envelope])
                    continue
                self._fail_unencodable(chunk[0], exc)
                continue
            for carried, data in frames:  # several only past the receiver's frame cap
                try:
                    # copy=True: for frames this small, copying is cheaper than a zero-copy Frame.
                    if route is None:
                        sock.send(data, zmq.NOBLOCK)
                    else:
                        sock.send_multipart((route, data), zmq.NOBLOCK)
                except zmq.Again:
                    counters["send_dropped_hwm"] += len(carried)
                    continue
                except zmq.ZMQError as exc:  # e.g. ROUTER route gone: EHOSTUNREACH
                    counters["send_errors"] += len(carried)
                    log.debug("send failed: %s", exc)
                    continue
                counters["frames_out"] += 1
                counters["msgs_out"] += len(carried)
                counters["bytes_out"] += len(data)

    def _fail_unencodable(self, envelope: tuple, exc: Exception) -> None:
        self.counters["encode_errors"] += 1
        log.warning("cannot encode a %s message: %s", type(envelope[4]).__name__, exc)
        future = self._pop_ask(envelope[3]) if envelope[0] == ASK else None
        if future is not None:
            future.set_exception(exc)

    def _pop_ask(self, correlation_id: int) -> Future | None:
        self._ask_endpoints.pop(correlation_id, None)
        return self._asks.pop(correlation_id, None)

    def _drain_monitor(self, monitor: zmq.Socket) -> None:
        endpoint, news = self.outbound.drain(monitor)
        if news == DOWN:
            self.counters["peer_unreachable"] += 1
            self._fail_asks_to(endpoint)
            for listener in self._disconnect_listeners:
                self._run_hook(lambda: listener(endpoint))
        elif news is not None:  # the CURVE handshake failed
            self.counters[f"peer_{news}"] += 1
            self._fail_asks_to(endpoint, f"{news.replace('_', ' ')} (CURVE)")

    def _fail_asks_to(self, endpoint: str, why: str = "") -> None:
        lost = [cid for cid, asked in self._ask_endpoints.items() if asked == endpoint]
        for correlation_id in lost:
            future = self._pop_ask(correlation_id)
            if future is not None:
                future.set_exception(RemoteError("peer_unreachable",
                                                 f"the connection to {endpoint} dropped{': ' + why if why else ''}"))

    def know_server_key(self, endpoint: str, key: bytes | str) -> None:
        """The CURVE key of ``endpoint``'s node, for a first connection (any thread; no-op without CURVE)."""
        if self.curve is not None and key:
            self.server_keys[endpoint] = key.encode() if isinstance(key, str) else key

    # ------------------------------------------------------------------ timers and deadlines

    def add_timer(self, first_due: float, interval_s: float | None, target: Any, name: str) -> int:
        """Any thread: returns a timer id for ``cancel_timer``."""
        timer_id = self._timers.new_id()
        self.call(lambda: self._timers.add(timer_id, first_due, interval_s, target, name))
        return timer_id

    def cancel_timer(self, timer_id: int) -> None:
        self.call(lambda: self._timers.cancel(timer_id))

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        if self.faults is not None:
            for destination, envelopes in self.faults.due(now):
                if isinstance(destination, str):
                    self._send(self.outbound.dealer(destination), None, envelopes)
                else:
                    self._send(self._router, destination, envelopes)
        for target, name in self._timers.pop_due(now):
            self._deliver(target, [InboundMessage(TELL, None, 0, Tick(name, int(now * 1000)))])
        deadlines = self._ask_deadlines
        while deadlines and deadlines[0][0] <= now:
            _, correlation_id = heapq.heappop(deadlines)
            future = self._pop_ask(correlation_id)
            if future is not None:
                future.set_exception(AskTimeout("no answer before the ask's deadline"))
