"""AgentHostActor: a node's side of hosting agents (one per node that hosts any, named "agent-host").

Role: everything a node does for its agents that is not one agent's business:

* heartbeats to the leader's agent directory (``AgentHostHeartbeat``, with each agent's mailbox
  depth), which is the host's lease: a host that stops heartbeating loses its agents;
* keeps the node's ``DirectoryCache`` fresh: the heartbeat's answer carries the directory's
  version, and a new version fetches the whole directory; an agent of this host that the
  directory no longer lists (its lease ran out while the host was stalled, say) is registered
  again;
* broadcasts: subscribes the node's SUB socket to every host's PUB endpoint for the message
  types its agents subscribe to, and hands each broadcast to those agents with the number of
  messages missed from that publisher before it;
* publishes the agents' message history to the masters in batches (``agent.history``);
* answers ``Deliver`` (put a message in a mailbox, say whether it went in), which the CLI's
  ``agentflow send`` uses.

Rules: spawned pinned, so it never blocks: its asks to the leader are answered through future
callbacks that tell it ``_Answered``; at most one ask of each kind is in flight. Messages from
agents (``Hosted``, ``Unhosted``) are local records, never on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols.agents import (
    AgentEntry,
    AgentHostAck,
    AgentHostHeartbeat,
    AgentMessage,
    Deliver,
    DirectoryQuery,
    DirectoryView,
    RegisterAgentRequest,
)
from protocols.names import AGENT_HOST_ACTOR, AGENTS_ACTOR
from protocols.wire import ErrorRecord, Event, Redirect, Tick
from runtime.actor import Actor
from runtime.agents import BROADCAST_TOPIC, HISTORY_TOPIC, DirectoryCache
from runtime.log import get_logger
from runtime.node import Node, Ref

log = get_logger("agent")

HEARTBEAT_INTERVAL_S = 0.5
HISTORY_INTERVAL_S = 0.2
HISTORY_BATCH = 1000  # entries per published event
ASK_TIMEOUT_S = 1.0


@dataclass
class Hosted:
    entry: AgentEntry


@dataclass
class Unhosted:
    agent_id: str


@dataclass
class Broadcast:
    """A broadcast as an agent receives it: ``missed`` counts the publisher's earlier messages
    this host never saw."""

    message: AgentMessage
    missed: int


@dataclass
class _Answered:
    kind: str  # "heartbeat" or "directory"
    endpoint: str
    value: Any
    error: BaseException | None


def host_of(node: Node) -> Ref:
    """The node's agent host, spawned on first use."""
    try:
        return node.lookup((node.node_id, AGENT_HOST_ACTOR))
    except LookupError:
        try:
            return node.spawn(AgentHostActor, name=AGENT_HOST_ACTOR, pinned=True)
        except ValueError:  # another thread spawned it first
            return node.lookup((node.node_id, AGENT_HOST_ACTOR))


class AgentHostActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.cache = DirectoryCache.of(self.node)
        self.hosted: dict[str, AgentEntry] = {}
        self.masters = list(self.node.master_endpoints)
        self.leader_endpoint: str | None = None
        self._turn = 0
        self._in_flight: set[str] = set()
        self._subscribed: set[tuple[str, str]] = set()  # (pub endpoint, message type)
        self._timers: list[int] = []

    def on_start(self) -> None:
        self.me = self.node.lookup(self.address)
        self._timers = [self.node.every(HEARTBEAT_INTERVAL_S, self.me, "heartbeat"),
                        self.node.every(HISTORY_INTERVAL_S, self.me, "history")]

    def on_stop(self) -> None:
        for timer_id in self._timers:
            self.node.cancel_timer(timer_id)
        self._publish_history()

    # ------------------------------------------------------------------ messages

    def receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is Tick:
            if message.name == "heartbeat":
                self._heartbeat()
            else:
                self._publish_history()
            return None
        if kind is Event:
            if isinstance(message.body, AgentMessage):
                self._hand_out(message.body, message.gap)
            return None
        if kind is AgentMessage:  # a broadcast relayed by the leader (sent from outside any host)
            self._hand_out(message, 0)
            return None
        if kind is Deliver:
            return self._deliver(message)
        if kind is _Answered:
            self._on_answered(message)
            return None
        if kind is Hosted:
            self.hosted[message.entry.agent_id] = message.entry
            self.cache.entries = {**self.cache.entries, message.entry.agent_id: message.entry}
            self._follow_subscriptions()
            self._heartbeat()
            return None
        if kind is Unhosted:
            self.hosted.pop(message.agent_id, None)
            return None
        return ErrorRecord("unknown_message", kind.__name__)

    def _deliver(self, deliver: Deliver) -> Any:
        message = deliver.message
        entry = self.hosted.get(message.to_agent)
        if entry is None and deliver.actor:  # a tenant's agent, sent to as TENANT:ID by an operator
            entry = next((hosted for hosted in self.hosted.values() if hosted.actor == deliver.actor), None)
        if entry is None:
            return ErrorRecord("unknown_actor", f"no agent {message.to_agent!r} on {self.node.node_id}")
        depth, _ = self.node.mailbox_depth(entry.actor)
        limit = self.node.mailbox_limit(entry.actor)
        if limit is not None and depth >= limit:
            self.node.count("refused_mailbox_full")
            return ErrorRecord("mailbox_full", f"{message.to_agent}'s mailbox is full")
        self.node.lookup((self.node.node_id, entry.actor)).tell(message)
        return True

    def _hand_out(self, message: AgentMessage, missed: int) -> None:
        if missed:
            self.node.count("agent_broadcasts_missed", missed)
        for agent_id, entry in self.hosted.items():
            if message.msg_type in entry.subscriptions and agent_id != message.from_agent:
                self.node.lookup((self.node.node_id, entry.actor)).tell(Broadcast(message, missed))

    # ------------------------------------------------------------------ the leader

    def _heartbeat(self) -> None:
        if not self.hosted or "heartbeat" in self._in_flight:
            return
        depths, handled = {}, {}
        for agent_id, entry in self.hosted.items():
            depths[agent_id], handled[agent_id] = self.node.mailbox_depth(entry.actor)
        self._ask("heartbeat", AgentHostHeartbeat(self.node.node_id, self.node.endpoint, depths, handled))

    def _master(self) -> str:
        """The leader's endpoint if known, else the next master in turn."""
        return self.leader_endpoint or self.masters[self._turn % len(self.masters)]

    def _ask(self, kind: str, message: Any) -> None:
        endpoint = self._master()
        self._in_flight.add(kind)
        me = self.me

        def answered(future) -> None:
            try:
                value, error = future.get(0), None
            except Exception as exc:
                value, error = None, exc
            me.tell(_Answered(kind, endpoint, value, error))

        self.node.ref(endpoint, AGENTS_ACTOR).ask(message, timeout_s=ASK_TIMEOUT_S).add_done_callback(answered)

    def _on_answered(self, answer: _Answered) -> None:
        self._in_flight.discard(answer.kind)
        value = answer.value
        if answer.error is not None or isinstance(value, ErrorRecord):
            self.leader_endpoint = None
            self._turn += 1
            return
        if isinstance(value, Redirect):
            self.leader_endpoint = value.leader_endpoint
            return
        self.leader_endpoint = answer.endpoint
        if isinstance(value, AgentHostAck) and value.directory_version != self.cache.version:
            if "directory" not in self._in_flight:
                self._ask("directory", DirectoryQuery(None))
        elif isinstance(value, DirectoryView) and value.version >= self.cache.version:
            self.cache.replace(value)
            for agent_id in self.hosted:  # a subscription change comes back through the directory
                entry = self.cache.entries.get(agent_id)
                if entry is not None and entry.host_id == self.node.node_id:
                    self.hosted[agent_id] = entry
            missing = {agent_id: entry for agent_id, entry in self.hosted.items() if agent_id not in self.cache.entries}
            if missing:  # registered here, and not in the leader's answer: not yet, or dropped
                self.cache.entries = {**self.cache.entries, **missing}
                self._register_again(missing)
            self._follow_subscriptions()

    def _register_again(self, missing: dict[str, AgentEntry]) -> None:
        """Agents alive here that the directory dropped register again (one ask each; a refusal,
        another host having taken the id meanwhile, is logged and left alone)."""
        for agent_id, entry in missing.items():
            def registered(future, agent_id=agent_id) -> None:
                try:
                    future.get(0)
                except Exception as exc:  # noqa: BLE001 - the next refresh tries again
                    log.info("Agent %s could not register again: %s", agent_id, exc)

            self.node.ref(self._master(), AGENTS_ACTOR).ask(RegisterAgentRequest(entry),
                                                            timeout_s=ASK_TIMEOUT_S).add_done_callback(registered)

    # ------------------------------------------------------------------ broadcasts and history

    def _follow_subscriptions(self) -> None:
        """Be subscribed, on every host's PUB endpoint, to the types our agents subscribe to."""
        types = sorted({t for entry in self.hosted.values() for t in entry.subscriptions})
        publishers = {entry.pub_endpoint for entry in self.cache.entries.values()} | {self.node.pub_endpoint}
        for pub_endpoint in sorted(publishers):
            for msg_type in types:
                if (pub_endpoint, msg_type) not in self._subscribed:
                    self._subscribed.add((pub_endpoint, msg_type))
                    self.node.subscribe(pub_endpoint, BROADCAST_TOPIC + msg_type, self.me)
        gone = {pub for pub, _ in self._subscribed} - publishers
        for pub_endpoint in gone:
            self.node.transport.unsubscribe_publisher(pub_endpoint)
            self._subscribed = {(pub, t) for pub, t in self._subscribed if pub != pub_endpoint}

    def _publish_history(self) -> None:
        while True:
            rows = self.cache.history.drain(HISTORY_BATCH)
            if not rows:
                return
            self.node.publish(HISTORY_TOPIC, {"host": self.node.node_id, "rows": rows})
