"""Agents as data: the message an agent sends, the replicated agent directory, host leases and
the bounded message history.

An agent is an actor that a node hosts under the name ``agent/ID``; messaging it is putting an
``AgentMessage`` in its mailbox. This module holds the seed's ``AgentMessage`` and
``MessageType``, and the pure state machines behind them:

* ``AgentDirectory``, part of the Raft-replicated state: agent id -> where it lives (host node,
  endpoints, group, subscriptions). It changes only through the ``agent.*`` commands below,
  applied in log order on every master, so every master reaches the same directory. A
  registration names the host it replaces (``replaces_host``): it succeeds only if the id is
  free or still held by exactly that host, so a duplicate id is refused while the first is
  alive, and a leader replaces a dead host's entry without a race.
* ``HostLeases``, soft state on the leader: a host that has not heartbeaten for ``lease_ms`` is
  dead, and the leader proposes ``RemoveAgentHost`` for it (which removes all its agents).
* ``MessageHistory``, a bounded ring of message envelopes, newest last.

Rules: pure and deterministic (time comes in as ``now_ms``; no clocks, sockets or threads);
the directory iterates only dicts filled in command order; every structure is bounded by its
caller's limits.
"""

from __future__ import annotations

import collections
import dataclasses
from enum import Enum
from typing import Any

from protocols.wire import record

AGENT_ACTOR_PREFIX = "agent/"


class MessageType(str, Enum):
    """The seed's ten message types. On the wire a type is its string value."""

    TASK_REQUEST = "task_request"
    TASK_RESPONSE = "task_response"
    STATUS_UPDATE = "status_update"
    RESOURCE_QUERY = "resource_query"
    RESOURCE_RESPONSE = "resource_response"
    COLLABORATION_REQUEST = "collaboration_request"
    COLLABORATION_RESPONSE = "collaboration_response"
    NOTIFICATION = "notification"
    HEARTBEAT = "heartbeat"
    ERROR = "error"


MESSAGE_TYPES = tuple(member.value for member in MessageType)
_REPLY_TYPES = {
    MessageType.TASK_REQUEST.value: MessageType.TASK_RESPONSE.value,
    MessageType.RESOURCE_QUERY.value: MessageType.RESOURCE_RESPONSE.value,
    MessageType.COLLABORATION_REQUEST.value: MessageType.COLLABORATION_RESPONSE.value,
}


def message_type(value: str | MessageType) -> str:
    """``"TaskRequest"``, ``"task_request"`` or ``MessageType.TASK_REQUEST`` -> ``"task_request"``;
    ValueError naming the ten types otherwise."""
    if isinstance(value, MessageType):
        return value.value
    if isinstance(value, str):
        text = value.strip()
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in text).lstrip("_").replace("-", "_")
        for candidate in (text.lower(), snake.lower()):
            if candidate in MESSAGE_TYPES:
                return candidate
    raise ValueError(f"unknown message type {value!r} (use one of: {', '.join(MESSAGE_TYPES)})")


def reply_type(request_type: str) -> str:
    """The type of the answer to a request: TaskRequest -> TaskResponse, and so on; a request of
    another type is answered with its own type."""
    return _REPLY_TYPES.get(request_type, request_type)


def agent_actor_name(agent_id: str) -> str:
    return AGENT_ACTOR_PREFIX + agent_id


def check_agent_id(agent_id: Any, what: str = "agent id") -> str:
    if not isinstance(agent_id, str) or not agent_id or len(agent_id) > 200 or any(c.isspace() for c in agent_id):
        raise ValueError(f"bad {what} {agent_id!r}: a non-empty name of at most 200 characters, no spaces")
    return agent_id


@record("agent.message")
class AgentMessage:
    """One agent message. ``to_agent`` is "" for a broadcast; ``correlation_id`` is, on a reply,
    the ``message_id`` of the request it answers."""

    message_id: str
    from_agent: str
    to_agent: str
    msg_type: str
    content: Any
    timestamp_ms: int
    correlation_id: str | None = None

    @property
    def type(self) -> MessageType:
        return MessageType(self.msg_type)


# --------------------------------------------------------------------------- the directory


@record("agent.entry")
class AgentEntry:
    """Where an agent lives: its host node and the host's endpoints, its group ("" for none),
    the message types it subscribes to, the host's CURVE public key ("" without CURVE), and the
    actor name the host runs it under when that is not ``agent/AGENT_ID`` (a tenant's agent is
    listed as ``TENANT:ID``, its host knows it as ``ID``: protocols/tenants.py)."""

    agent_id: str
    host_id: str
    endpoint: str
    pub_endpoint: str
    group: str
    subscriptions: list
    public_key: str = ""
    actor_name: str = ""

    @property
    def actor(self) -> str:
        return self.actor_name or agent_actor_name(self.agent_id)


@record("agent.register")
class RegisterAgent:
    entry: AgentEntry
    replaces_host: str | None  # the id must be free (None) or held by exactly this host


@record("agent.unregister")
class UnregisterAgent:
    agent_id: str
    host_id: str


@record("agent.subscribe")
class SetSubscriptions:
    agent_id: str
    host_id: str
    subscriptions: list


@record("agent.remove_host")
class RemoveAgentHost:
    """A host died (its lease ran out) or stopped: every agent it hosted leaves the directory."""

    host_id: str
    reason: str


class AgentDirectory:
    """The replicated agent directory; ``version`` grows with every change (caches compare it)."""

    def __init__(self) -> None:
        self.entries: dict[str, AgentEntry] = {}
        self.version = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, agent_id: str) -> AgentEntry | None:
        return self.entries.get(agent_id)

    def group(self, group: str) -> list[AgentEntry]:
        """The members of ``group``, by agent id."""
        return sorted((e for e in self.entries.values() if e.group == group), key=lambda e: e.agent_id)

    def hosts(self) -> dict[str, str]:
        """host id -> its PUB endpoint, for every host with an agent, in first-registration order."""
        found: dict[str, str] = {}
        for entry in self.entries.values():
            found.setdefault(entry.host_id, entry.pub_endpoint)
        return found

    def on_host(self, host_id: str) -> list[str]:
        return [agent_id for agent_id, entry in self.entries.items() if entry.host_id == host_id]

    def apply(self, command: Any) -> dict:
        """Apply one ``agent.*`` command; the result says what happened (same on every master)."""
        if isinstance(command, RegisterAgent):
            entry = command.entry
            current = self.entries.get(entry.agent_id)
            if current is not None and current.host_id != command.replaces_host:
                return {"ok": False, "reason": "agent_exists", "host_id": current.host_id}
            self.entries.pop(entry.agent_id, None)  # a re-registration moves to the end
            self.entries[entry.agent_id] = entry
            return self._changed({"ok": True, "replaced": current.host_id if current else None})
        if isinstance(command, UnregisterAgent):
            current = self.entries.get(command.agent_id)
            if current is None or current.host_id != command.host_id:
                return {"ok": False, "reason": "not_registered_here"}
            del self.entries[command.agent_id]
            return self._changed({"ok": True})
        if isinstance(command, SetSubscriptions):
            current = self.entries.get(command.agent_id)
            if current is None or current.host_id != command.host_id:
                return {"ok": False, "reason": "not_registered_here"}
            self.entries[command.agent_id] = dataclasses.replace(current, subscriptions=list(command.subscriptions))
            return self._changed({"ok": True})
        if isinstance(command, RemoveAgentHost):
            removed = self.on_host(command.host_id)
            for agent_id in removed:
                del self.entries[agent_id]
            return self._changed({"ok": True, "removed": removed}) if removed else {"ok": True, "removed": []}
        return {"ok": False, "reason": f"unknown agent command {type(command).__name__}"}

    def _changed(self, result: dict) -> dict:
        self.version += 1
        result["version"] = self.version
        return result

    def to_snapshot(self) -> dict:
        return {"version": self.version, "entries": list(self.entries.values())}

    @classmethod
    def from_snapshot(cls, snapshot: dict) -> AgentDirectory:
        directory = cls()
        directory.version = snapshot["version"]
        directory.entries = {entry.agent_id: entry for entry in snapshot["entries"]}
        return directory


# --------------------------------------------------------------------------- host leases


class HostLeases:
    """Which agent hosts are alive, as the leader sees them (soft state, never replicated)."""

    def __init__(self, lease_ms: int) -> None:
        if lease_ms <= 0:
            raise ValueError("the host lease must be positive")
        self.lease_ms = lease_ms
        self._expires_ms: dict[str, int] = {}

    def renew(self, host_id: str, now_ms: int) -> bool:
        """Extend ``host_id``'s lease; True if the host was not known (alive) before."""
        known = host_id in self._expires_ms
        self._expires_ms[host_id] = now_ms + self.lease_ms
        return not known

    def grant_grace(self, host_ids: list[str], now_ms: int) -> None:
        """A new leader gives every host it inherits one full lease to heartbeat again."""
        for host_id in host_ids:
            self._expires_ms.setdefault(host_id, now_ms + self.lease_ms)

    def alive(self, host_id: str, now_ms: int) -> bool:
        expires_ms = self._expires_ms.get(host_id)
        return expires_ms is not None and expires_ms > now_ms

    def expired(self, now_ms: int) -> list[str]:
        """The hosts whose lease ran out (and forgets them), in the order they were first seen."""
        gone = [host_id for host_id, expires_ms in self._expires_ms.items() if expires_ms <= now_ms]
        for host_id in gone:
            del self._expires_ms[host_id]
        return gone

    def forget(self, host_id: str) -> None:
        self._expires_ms.pop(host_id, None)

    def clear(self) -> None:
        self._expires_ms.clear()


# --------------------------------------------------------------------------- history


@record("agent.history_entry")
class HistoryEntry:
    """One message as the history keeps it: the envelope, and the content when it was small
    (``content_bytes`` is its encoded size; content None and a size above the limit means it was
    left out). ``host`` is the node that recorded it."""

    message_id: str
    from_agent: str
    to_agent: str
    msg_type: str
    timestamp_ms: int
    correlation_id: str | None
    content: Any
    content_bytes: int
    host: str


# A history row as hosts publish it: [message_id, from_agent, to_agent, msg_type, timestamp_ms,
# correlation_id, content (None when left out), content_bytes]. Rows, not records: a host makes
# one per message its agents handle, and a list costs a fraction of a record to build and encode.
_ROW_TYPES = (str, str, str, str, int, (str, type(None)), object, int)


def valid_history_row(row: Any) -> bool:
    return (isinstance(row, list) and len(row) == len(_ROW_TYPES)
            and all(isinstance(value, kind) for value, kind in zip(row, _ROW_TYPES)))


class MessageHistory:
    """A bounded ring of history rows with the host that recorded each, newest last; a message
    (id, type, receiver) is kept once; malformed rows are counted and dropped."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the history capacity must be at least 1")
        self.capacity = capacity
        self._entries: collections.OrderedDict[str, tuple[list, str]] = collections.OrderedDict()
        self.dropped = 0  # entries pushed out by newer ones
        self.malformed = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, host: str, rows: list) -> None:
        for row in rows:
            if not valid_history_row(row):
                self.malformed += 1
                continue
            key = f"{row[0]}/{row[3]}/{row[2]}"
            if key in self._entries:
                continue
            self._entries[key] = (row, host)
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self.dropped += 1

    def query(self, limit: int, agent: str | None = None, msg_type: str | None = None) -> list[HistoryEntry]:
        """The latest ``limit`` entries to arrive, ordered by their timestamps (newest last); only
        those sent or received by ``agent`` and of ``msg_type`` when given."""
        found: list[HistoryEntry] = []
        for row, host in reversed(self._entries.values()):
            if len(found) >= max(0, limit):
                break
            if agent is not None and agent not in (row[1], row[2]):
                continue
            if msg_type is not None and row[3] != msg_type:
                continue
            found.append(HistoryEntry(*row, host))
        found.reverse()
        # Hosts publish in batches, so arrivals interleave hosts: order by the senders' clocks
        # (a stable sort: equal timestamps keep their arrival order).
        found.sort(key=lambda entry: entry.timestamp_ms)
        return found


# --------------------------------------------------------------------------- requests to masters


@record("agent.register_request")
class RegisterAgentRequest:
    entry: AgentEntry


@record("agent.unregister_request")
class UnregisterAgentRequest:
    agent_id: str
    host_id: str


@record("agent.subscribe_request")
class SubscribeRequest:
    agent_id: str
    host_id: str
    subscriptions: list


@record("agent.host_heartbeat")
class AgentHostHeartbeat:
    """A host's heartbeat to the leader: its agents' mailbox depths and message counts."""

    host_id: str
    endpoint: str
    mailbox_depths: dict
    messages_handled: dict


@record("agent.host_ack")
class AgentHostAck:
    directory_version: int


@record("agent.directory_query")
class DirectoryQuery:
    """``agent_ids`` None: the whole directory."""

    agent_ids: list | None


@record("agent.directory")
class DirectoryView:
    version: int
    entries: list
    stats: dict  # agent id -> {"mailbox_depth", "messages_handled"} as last heartbeaten


@record("agent.history_request")
class HistoryRequest:
    limit: int
    agent: str | None
    msg_type: str | None


@record("agent.broadcast_request")
class BroadcastRequest:
    """A broadcast from outside any agent host (the CLI): the leader relays it to the hosts of
    the agents whose id starts with ``agent_prefix`` (a tenant's broadcast reaches its own)."""

    message: AgentMessage
    agent_prefix: str = ""


@record("agent.deliver")
class Deliver:
    """Asked of a host's agent-host actor: put ``message`` in its agent's mailbox and say so (or
    refuse with unknown_actor / mailbox_full) without waiting for the agent to handle it.
    ``actor`` is the agent's actor as the directory names it: a tenant's agent is TENANT:ID to
    an operator and ID to its own host, and the actor name is the same to both."""

    message: AgentMessage
    actor: str = ""
