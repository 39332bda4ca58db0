"""A Node is one OS process of the cluster: it hosts actors and owns one transport.

    node = Node("n1", port=6767).start()
    echo = node.spawn(EchoActor, name="echo")
    peer = node.ref("tcp://127.0.0.1:6768", "echo")     # or node.lookup(("n2", "echo"))
    peer.tell("hello"); peer.ask("ping", timeout_s=1.0).get()
    node.stop()

Rules: an address ``(node_id, actor_name)`` names an actor anywhere; a ``Ref`` to it offers
``tell`` and ``ask`` whether the actor is local or remote, like a pykka ``ActorRef``. The
node learns peers' endpoints from the frames they send; its own, in every frame, is the
advertised one (``advertise_host``/``advertise_port``) when given, else the bound one. With
``max_connections_per_peer`` one address may hold at most that many connections to it (a
master's default: 1,000; runtime/connections.py). ``stop()`` ends every actor, timer, thread
and socket the node started.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from typing import Any

import pykka

from protocols.tasks import parse_master_urls
from protocols.wire import ASK, DEFAULT_COMPRESS_MIN_BYTES, DEFAULT_MAX_FRAME_BYTES, TELL, Address, ErrorRecord, Refused
from runtime.actor import Actor, _spawning, current_actor_name
from runtime.framing import FrameCodec
from runtime.future import Future, RemoteError
from runtime.messages import InboundBatch, InboundMessage
from runtime.security import CurveKeys
from runtime.tenancy import TenantGate
from runtime.transport import Transport

DEFAULT_ASK_TIMEOUT_S = 5.0
# A master's: generous, as every node of a one-host cluster connects from 127.0.0.1.
DEFAULT_MAX_CONNECTIONS_PER_PEER = 1000


class _PykkaTarget:
    """Delivers a batch to a pykka actor: one ``tell`` (one thread hand-off) per batch. Any
    thread may deliver, so ``post`` (from a thread other than the transport's) is ``deliver``.

    With a ``mailbox_limit`` it counts the messages delivered but not yet handled (``depth``;
    the actor calls ``done`` after each batch) and refuses what would go over the limit, so a
    slow actor's mailbox cannot grow without bound."""

    __slots__ = ("node", "actor_ref", "limit", "depth", "handled", "_lock")

    def __init__(self, node: Node, actor_ref: pykka.ActorRef, mailbox_limit: int | None = None) -> None:
        self.node, self.actor_ref = node, actor_ref
        self.limit = mailbox_limit
        self.depth = self.handled = 0
        self._lock = threading.Lock()

    def deliver(self, messages: list[InboundMessage]) -> None:
        if self.limit is not None:
            with self._lock:
                room = max(0, self.limit - self.depth)
                self.depth += min(room, len(messages))
            if room < len(messages):
                self.node.refuse(messages[room:], "mailbox_full")
                messages = messages[:room]
                if not messages:
                    return
        try:
            self.actor_ref.tell(InboundBatch(messages))
        except pykka.ActorDeadError:
            self.node.count("to_dead_actor", len(messages))
            for message in messages:
                if message.kind == ASK:
                    self.node.answer(message, None, ErrorRecord("actor_stopped", "the actor has stopped"))

    post = deliver

    def done(self, count: int) -> None:
        if self.limit is not None:
            with self._lock:
                self.depth -= count
                self.handled += count


class _PinnedTarget:
    """Runs a pinned actor's handler on the transport thread itself (no hand-off): ``deliver``
    is for the transport thread, ``post`` for any thread (it queues the delivery there)."""

    __slots__ = ("actor", "transport")

    def __init__(self, actor: Actor, transport: Transport) -> None:
        self.actor = actor
        self.transport = transport

    def deliver(self, messages: list[InboundMessage]) -> None:
        self.actor.handle_batch(messages)

    def post(self, messages: list[InboundMessage]) -> None:
        self.transport.call(lambda: self.deliver(messages))


class Ref:
    """A reference to an actor, local or remote: ``tell(msg)`` and ``ask(msg, timeout_s)``."""

    __slots__ = ("node", "address", "endpoint", "_target")

    def __init__(self, node: Node, address: Address, endpoint: str | None, target: Any = None):
        self.node = node
        self.address = address
        self.endpoint = endpoint  # None for a local actor
        self._target = target

    def __repr__(self) -> str:
        return f"Ref({self.address[0]}/{self.address[1]})"

    def tell(self, message: Any) -> None:
        if self._target is not None:
            self._target.post([InboundMessage(TELL, self.node._local_sender(), 0, message)])
        else:
            self.node.transport.send(self.endpoint, self.address[1], message, current_actor_name())

    def ask(self, message: Any, timeout_s: float = DEFAULT_ASK_TIMEOUT_S) -> Future:
        future = Future(time.monotonic() + timeout_s)
        if self._target is not None:
            self._target.post([InboundMessage(ASK, self.node._local_sender(), 0, message, future=future)])
        else:
            self.node.transport.ask(self.endpoint, self.address[1], message, future, current_actor_name())
        return future


class Node:
    def __init__(
        self,
        node_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        pub_port: int | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        master_urls: str | list[str] | None = None,
        curve: CurveKeys | None = None,
        advertise_host: str | None = None,
        advertise_port: int | None = None,
        max_connections_per_peer: int | None = None,
        compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES,
    ) -> None:
        self.node_id = node_id or f"node-{uuid.uuid4().hex[:8]}"
        self.host = host
        # The cluster this node belongs to (any member will do): what hosting agents needs.
        self.master_endpoints = parse_master_urls(master_urls) if master_urls else []
        self.counters: collections.Counter[str] = collections.Counter()
        self.targets: dict[str, Any] = {}  # actor name -> delivery target: the transport's directory
        self._actors: dict[str, Actor] = {}
        self._pykka_refs: list[pykka.ActorRef] = []
        self.curve = curve
        # Frames (and events) of compress_min_bytes and more travel compressed; 0: none.
        codec = FrameCodec(max_frame_bytes, compress_min_bytes, self.counters)
        self.transport = Transport(self.node_id, host, port, pub_port, codec, self.targets, self.counters,
                                   curve, advertise_host, advertise_port, max_connections_per_peer)
        self.peers = self.transport.peers  # node_id -> endpoint, learned from frames
        self.install_gate(TenantGate(self))
        self.endpoint = self.transport.endpoint
        self.pub_endpoint = self.transport.pub_endpoint
        self._started = False

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> Node:
        if not self._started:
            self._started = True
            self.transport.start()
        return self

    # ------------------------------------------------------------------ actors

    def spawn(self, actor_class: type[Actor], *args: Any, name: str | None = None, pinned: bool = False,
              mailbox_limit: int | None = None, **kwargs: Any) -> Ref:
        """Start an actor under ``name`` (default: the class's ``actor_name(*args, **kwargs)``).

        ``pinned`` runs it on the transport thread (no hand-off); ``mailbox_limit`` bounds a
        pykka actor's mailbox (what would go over it is refused to the sender). Once the actor
        is reachable, its ``after_spawn()`` runs on this thread; if that raises, the actor is
        stopped and the error raised here."""
        if name is None:
            name = actor_class.actor_name(*args, **kwargs)
        if mailbox_limit is None:
            mailbox_limit = actor_class.default_mailbox_limit
        if name in self.targets:
            raise ValueError(f"an actor named {name!r} already runs on {self.node_id}")
        _spawning.node, _spawning.name = self, name
        try:
            if pinned:
                actor = actor_class(*args, **kwargs)
                target: Any = _PinnedTarget(actor, self.transport)
                self.targets[name] = target  # before on_start, which may look itself up
                self.transport.call(actor.on_start)
            else:
                actor_ref = actor_class.start(*args, **kwargs)
                self._pykka_refs.append(actor_ref)
                actor = _spawning.built
                target = _PykkaTarget(self, actor_ref, mailbox_limit)
                actor.mailbox = target
        finally:
            _spawning.node = _spawning.name = _spawning.built = None
        self._actors[name] = actor
        self.targets[name] = target
        try:
            actor.after_spawn()
        except BaseException:
            self.stop_actor(name)
            raise
        return Ref(self, (self.node_id, name), None, target)

    def stop_actor(self, name: str, timeout_s: float = 5.0) -> None:
        """Stop one actor (its ``on_stop`` runs) and forget its name; a no-op if it is not here."""
        actor = self._actors.get(name)
        if actor is not None:
            self._before_stop(actor)
        target = self.targets.pop(name, None)
        self._actors.pop(name, None)
        if isinstance(target, _PykkaTarget):
            if target.actor_ref in self._pykka_refs:
                self._pykka_refs.remove(target.actor_ref)
            try:
                target.actor_ref.stop(block=threading.current_thread() is not self.transport, timeout=timeout_s)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass
        elif isinstance(target, _PinnedTarget):
            self.transport.call(target.actor.on_stop)

    def mailbox_depth(self, name: str) -> tuple[int, int]:
        """(messages waiting, messages handled) of a bounded mailbox; (0, 0) for other actors."""
        target = self.targets.get(name)
        return (target.depth, target.handled) if isinstance(target, _PykkaTarget) else (0, 0)

    def mailbox_limit(self, name: str) -> int | None:
        """The bound of a local actor's mailbox, or None (unbounded, pinned, or no such actor)."""
        return getattr(self.targets.get(name), "limit", None)

    def actor(self, name: str) -> Actor:
        """The local actor object (for tests and in-process composition)."""
        return self._actors[name]

    def ref(self, endpoint: str, actor_name: str, node_id: str = "?") -> Ref:
        """A reference to an actor at a known endpoint (the bootstrap form)."""
        return Ref(self, (node_id, actor_name), endpoint)

    def lookup(self, address: Address) -> Ref:
        node_id, actor_name = address
        if node_id == self.node_id:
            target = self.targets.get(actor_name)
            if target is None:
                raise LookupError(f"no actor {actor_name!r} on {node_id}")
            return Ref(self, address, None, target)
        endpoint = self.peers.get(node_id)
        if endpoint is None:
            raise LookupError(f"node {node_id!r} is not known here (no frame from it yet)")
        return Ref(self, address, endpoint)

    def install_gate(self, gate: TenantGate) -> None:
        """What a message from a tenant's key may reach, and how its answers read
        (runtime/tenancy.py; a master installs its own before it spawns anything)."""
        self.gate = gate
        self.transport.admit = gate.admit

    def _local_sender(self) -> Address | None:
        name = current_actor_name()
        return (self.node_id, name) if name else None

    def answer(self, inbound: InboundMessage, value: Any, error: ErrorRecord | None = None) -> None:
        """Send the answer to an ask, wherever the asker is (a local future or a wire route)."""
        if inbound.tenant is not None:
            value, error = self.gate.reply(inbound, value, error)
        if inbound.future is not None:
            if error is None:
                inbound.future.set_result(value)
            else:
                inbound.future.set_exception(RemoteError(error.kind, error.message))
        elif inbound.route is not None:
            self.transport.reply(inbound.route, inbound.sender[1] if inbound.sender else "", inbound.correlation_id,
                                 value, error)

    def refuse(self, messages: list[InboundMessage], reason: str) -> None:
        """Messages that will not be delivered: an ask is answered with the reason; a tell from a
        named actor is told back to it as ``Refused``; the rest are only counted."""
        self.count(f"refused_{reason}", len(messages))
        for message in messages:
            if message.kind == ASK:
                self.answer(message, None, ErrorRecord(reason, f"{reason} on {self.node_id}"))
                continue
            sender = message.sender
            if not sender or not sender[1]:
                continue
            refused = Refused(reason, "", message.body)
            if sender[0] == self.node_id:
                target = self.targets.get(sender[1])
                if target is not None:
                    target.post([InboundMessage(TELL, None, 0, refused)])
            elif sender[0] in self.peers:
                self.transport.send(self.peers[sender[0]], sender[1], refused)

    # ------------------------------------------------------------------ events and timers

    def publish(self, topic: str, body: Any) -> None:
        """Publish on the node's PUB socket; each (publisher, topic) has its own sequence."""
        self.transport.publish(topic, body)

    def subscribe(self, pub_endpoint: str, topic: str, ref: Ref) -> None:
        """Deliver events whose topic starts with ``topic`` to a local actor as ``Event`` records."""
        if ref._target is None:
            raise ValueError("subscribers must be local actors")
        self.transport.subscribe(pub_endpoint, topic, ref._target)

    def every(self, interval_s: float, ref: Ref, name: str) -> int:
        """Tell ``ref`` a ``Tick(name)`` every ``interval_s``; returns an id for ``cancel_timer``."""
        return self.transport.add_timer(time.monotonic() + interval_s, interval_s, ref._target, name)

    def after(self, delay_s: float, ref: Ref, name: str) -> int:
        return self.transport.add_timer(time.monotonic() + delay_s, None, ref._target, name)

    def cancel_timer(self, timer_id: int) -> None:
        self.transport.cancel_timer(timer_id)

    def count(self, counter: str, n: int = 1) -> None:
        self.counters[counter] += n

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def inbound_connections(self) -> dict[str, int]:
        """Connections open to this node's ROUTER and the most one peer address holds (counted only
        with ``max_connections_per_peer``: zeros without). On the transport thread."""
        return self.transport.connections.stats()

    # ------------------------------------------------------------------ shutdown

    @staticmethod
    def _before_stop(actor: Actor) -> None:
        try:
            actor.before_stop()
        except Exception:
            pass  # it must not raise; a failure here must not keep the node from stopping

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every actor, then the transport (and with it every socket and timer)."""
        for actor in reversed(list(self._actors.values())):
            self._before_stop(actor)
        for actor_ref in reversed(self._pykka_refs):
            try:
                actor_ref.stop(block=True, timeout=timeout_s)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass
        self._pykka_refs.clear()
        for name, target in list(self.targets.items()):
            if isinstance(target, _PinnedTarget):
                self.transport.call(target.actor.on_stop)
        self.targets.clear()
        if self._started:
            self.transport.stop(timeout_s)
        else:
            self.transport._close()
