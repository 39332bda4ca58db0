"""The actor base class and the messages the runtime hands to actors.

An actor is a pykka ``ThreadingActor`` (or, when spawned ``pinned=True``, an object whose
messages the transport thread handles itself: no thread hand-off, for latency-critical actors).
Subclasses implement ``receive(message)``; its return value answers an ``ask``, like pykka's
``on_receive``. To answer later (after a Raft commit, say), call ``self.defer()`` and return the
handle it gives; ``handle.resolve(value)`` sends the answer then.

The runtime never tells an actor one message at a time from the network: it tells one
``InboundBatch`` per wake-up, and the base class walks it. An exception in ``receive`` becomes an
error record for the asker and a counter; it never stops the actor.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pykka

from protocols.wire import ASK, ErrorRecord
from runtime.log import get_logger
from runtime.messages import InboundBatch, InboundMessage

if TYPE_CHECKING:
    from runtime.node import Node

log = get_logger("actor")

_current = threading.local()
_spawning = threading.local()  # node and name of the actor being built by Node.spawn


def current_actor_name() -> str:
    """The name of the actor whose handler runs on this thread, or "" outside handlers."""
    return getattr(_current, "name", "")


class Deferred:
    """An answer promised by a handler; resolve or fail it exactly once, from any thread."""

    __slots__ = ("_node", "_message", "_done")

    def __init__(self, node: Node, message: InboundMessage | None) -> None:
        self._node, self._message, self._done = node, message, False

    def resolve(self, value: Any) -> None:
        if not self._done and self._message is not None:
            self._done = True
            self._node.answer(self._message, value, None)

    def fail(self, kind: str, message: str) -> None:
        if not self._done and self._message is not None:
            self._done = True
            self._node.answer(self._message, None, ErrorRecord(kind, message))


class Actor(pykka.ThreadingActor):
    """Base class of every AgentFlow actor. Set by the node at spawn: ``node``, ``name``."""

    _inbound: InboundMessage | None = None
    mailbox: Any = None  # the node's delivery target for this actor (pykka actors)
    default_mailbox_limit: int | None = None  # Node.spawn's mailbox_limit when it is given none

    @classmethod
    def actor_name(cls, *args: Any, **kwargs: Any) -> str:
        """The name ``Node.spawn`` gives an actor spawned without ``name=``."""
        raise TypeError(f"{cls.__name__}: pass name= to spawn it")

    def after_spawn(self) -> None:
        """Runs on the spawning thread once the actor is reachable; raising undoes the spawn."""

    def before_stop(self) -> None:
        """Runs on the stopping thread (``Node.stop_actor`` or ``Node.stop``) before the actor
        stops, while it can still talk; must not raise."""

    def __init__(self) -> None:
        super().__init__()
        # Node.spawn builds the actor on its own thread; pykka runs on_start only afterwards.
        self.node: Node = getattr(_spawning, "node", None)
        self.name: str = getattr(_spawning, "name", None) or type(self).__name__
        _spawning.built = self

    @property
    def address(self) -> tuple[str, str]:
        return (self.node.node_id, self.name)

    @property
    def sender(self) -> tuple[str, str] | None:
        """Who sent the message being handled (None for anonymous or local senders)."""
        return self._inbound.sender if self._inbound is not None else None

    def receive(self, message: Any) -> Any:
        """Handle one message; the return value answers an ask. Override this."""
        raise NotImplementedError(f"{type(self).__name__} handles no {type(message).__name__}")

    def defer(self) -> Deferred:
        """Promise an answer to the ask being handled; return the handle from ``receive``."""
        return Deferred(self.node, self._inbound)

    def on_receive(self, message: Any) -> Any:
        if type(message) is InboundBatch:
            self.handle_batch(message.messages)
            return None
        # A plain pykka tell/ask from inside this process.
        _current.name = self.name
        try:
            return self.receive(message)
        finally:
            _current.name = ""

    def handle_batch(self, messages: list[InboundMessage]) -> None:
        _current.name = self.name
        try:
            for inbound in messages:
                self._inbound = inbound
                try:
                    result = self.receive(inbound.body)
                except Exception as exc:  # a bad message must not stop the actor
                    self.node.count("handler_errors")
                    log.debug("%s failed on %s: %r", self.name, type(inbound.body).__name__, exc)
                    if inbound.kind == ASK:
                        self.node.answer(inbound, None, ErrorRecord("handler_error", repr(exc)))
                    continue
                if type(result) is ErrorRecord:
                    self.node.count(f"rejected_{result.kind}")  # every refusal counted, by reason
                if inbound.kind == ASK and not isinstance(result, Deferred):
                    self.node.answer(inbound, result)
        finally:
            self._inbound = None
            _current.name = ""
            if self.mailbox is not None:
                self.mailbox.done(len(messages))


class ServiceActor(Actor):
    """An actor around a pure service of one local client: each ``request_type`` message goes to
    ``service.handle``, and the reply it returns (if any) is told to the client, the local actor
    named ``reply_to``. Nothing else is shared: the client knows it by name, it knows the client
    by name (the SchedulerActor's QueueActor and RegistryActor are two)."""

    request_type: type = object

    def __init__(self, service: Any, reply_to: str) -> None:
        super().__init__()
        self.service = service
        self.reply_to = reply_to
        self._client: Any = None

    def receive(self, message: Any) -> Any:
        if type(message) is not self.request_type:
            return ErrorRecord("unknown_message", type(message).__name__)
        reply = self.service.handle(message)
        if reply is not None:
            if self._client is None:
                self._client = self.node.lookup((self.node.node_id, self.reply_to))
            self._client.tell(reply)
        return None
