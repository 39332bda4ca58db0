"""A Node is one OS process of the cluster: it hosts actors and owns one transport.

    node = Node("n1", port=6767).start()
    echo = node.spawn(EchoActor, name="echo")
    peer = node.ref("tcp://127.0.0.1:6768", "echo")     # or node.lookup(("n2", "echo"))
    peer.tell("hello"); peer.ask("ping", timeout_s=1.0).get()
    node.stop()

Rules: an address ``(node_id, actor_name)`` names an actor anywhere; a ``Ref`` to it offers
``tell`` and ``ask`` whether the actor is local or remote, like a pykka ``ActorRef``. The
node learns peers' endpoints from the frames they send. ``stop()`` ends every actor, timer,
thread and socket the node started.
"""

from __future__ import annotations

import collections
import itertools
import time
import uuid
from typing import Any

import pykka

from protocols.wire import ASK, DEFAULT_MAX_FRAME_BYTES, ERROR, REPLY, TELL, Address, ErrorRecord
from runtime.actor import Actor, InboundBatch, InboundMessage, _spawning, current_actor_name
from runtime.future import Future, RemoteError
from runtime.transport import _ASK, _PUBLISH, _TO_PEER, _TO_ROUTE, Transport

DEFAULT_ASK_TIMEOUT_S = 5.0

_correlation_ids = itertools.count(1)


class _PykkaTarget:
    """Delivers a batch to a pykka actor: one ``tell`` (one thread hand-off) per batch. Any
    thread may deliver, so ``post`` (from a thread other than the transport's) is ``deliver``."""

    __slots__ = ("node", "actor_ref")

    def __init__(self, node: Node, actor_ref: pykka.ActorRef) -> None:
        self.node, self.actor_ref = node, actor_ref

    def deliver(self, messages: list[InboundMessage]) -> None:
        try:
            self.actor_ref.tell(InboundBatch(messages))
        except pykka.ActorDeadError:
            self.node.count("to_dead_actor", len(messages))
            for message in messages:
                if message.kind == ASK:
                    self.node._answer(message, None, ErrorRecord("actor_stopped", "the actor has stopped"))

    post = deliver


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
            self.node.transport.submit(
                (_TO_PEER, self.endpoint, (TELL, current_actor_name(), self.address[1], 0, message))
            )

    def ask(self, message: Any, timeout_s: float = DEFAULT_ASK_TIMEOUT_S) -> Future:
        future = Future(time.monotonic() + timeout_s)
        if self._target is not None:
            self._target.post([InboundMessage(ASK, self.node._local_sender(), 0, message, future=future)])
        else:
            correlation_id = next(_correlation_ids)
            envelope = (ASK, current_actor_name(), self.address[1], correlation_id, message)
            self.node.transport.submit((_ASK, self.endpoint, envelope, correlation_id, future))
        return future


class Node:
    def __init__(
        self,
        node_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        pub_port: int | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.node_id = node_id or f"node-{uuid.uuid4().hex[:8]}"
        self.host = host
        self.fixed_port = bool(port)
        self.counters: collections.Counter[str] = collections.Counter()
        self.peers: dict[str, str] = {}  # node_id -> endpoint, learned from frames
        self.targets: dict[str, Any] = {}  # actor name -> delivery target
        self._actors: dict[str, Actor] = {}
        self._pykka_refs: list[pykka.ActorRef] = []
        self.transport = Transport(self, host, port, pub_port, max_frame_bytes)
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

    def spawn(self, actor_class: type[Actor], *args: Any, name: str, pinned: bool = False, **kwargs: Any) -> Ref:
        """Start an actor under ``name``; ``pinned`` runs it on the transport thread (no hand-off)."""
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
                target = _PykkaTarget(self, actor_ref)
        finally:
            _spawning.node = _spawning.name = _spawning.built = None
        self._actors[name] = actor
        self.targets[name] = target
        return Ref(self, (self.node_id, name), None, target)

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

    def _local_sender(self) -> Address | None:
        name = current_actor_name()
        return (self.node_id, name) if name else None

    def _answer(self, inbound: InboundMessage, value: Any, error: ErrorRecord | None) -> None:
        """Send the answer to an ask, wherever the asker is."""
        if inbound.future is not None:
            if error is None:
                inbound.future.set_result(value)
            else:
                inbound.future.set_exception(RemoteError(error.kind, error.message))
            return
        if inbound.route is None:
            return
        kind, body = (REPLY, value) if error is None else (ERROR, error)
        self.transport.submit(
            (_TO_ROUTE, inbound.route, (kind, "", inbound.sender[1] if inbound.sender else "", inbound.correlation_id, body))
        )

    # ------------------------------------------------------------------ events and timers

    def publish(self, topic: str, body: Any) -> None:
        """Publish on the node's PUB socket; each (publisher, topic) has its own sequence."""
        self.transport.submit((_PUBLISH, topic, body))

    def subscribe(self, pub_endpoint: str, topic: str, ref: Ref) -> None:
        """Deliver events whose topic starts with ``topic`` to a local actor as ``Event`` records."""
        if ref._target is None:
            raise ValueError("subscribers must be local actors")
        self.transport.call(lambda: self.transport.subscribe(pub_endpoint, topic, ref._target))

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

    # ------------------------------------------------------------------ shutdown

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every actor, then the transport (and with it every socket and timer)."""
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
