"""What the runtime hands to an actor: one inbound message, and a batch of them.

A leaf module (it imports nothing of ours) so that the transport, the node and the actor base
class can all use it without importing each other.
"""

from __future__ import annotations

from typing import Any


class InboundMessage:
    """One message for an actor, with where its answer goes: a wire ``route`` (the ROUTER routing
    id of the connection an ask came in on) or a local ``future``; and the ``tenant`` of the key
    it came with (CURVE), None for operators, for the node's own messages and without CURVE."""

    __slots__ = ("kind", "sender", "correlation_id", "body", "route", "future", "tenant")

    def __init__(self, kind: int, sender: tuple[str, str] | None, correlation_id: int, body: Any,
                 route: bytes | None = None, future: Any = None, tenant: str | None = None) -> None:
        self.kind = kind
        self.sender = sender  # (node_id, actor_name), or None when unknown/anonymous
        self.correlation_id = correlation_id
        self.body = body
        self.route = route
        self.future = future
        self.tenant = tenant


class InboundBatch:
    """The messages one wake-up delivers to one actor (one thread hand-off for all of them)."""

    __slots__ = ("messages",)

    def __init__(self, messages: list[InboundMessage]) -> None:
        self.messages = messages
