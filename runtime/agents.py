"""AgentCommunication: how an agent (or any program) talks to agents anywhere in the cluster.

    comm = AgentCommunication(node, "planner")          # what an agent's ``self.comm`` is
    comm.send_to_agent(AgentMessage(...))              # point to point, fire and forget
    reply = comm.request("solver-1", {"part": 3}, timeout_ms=2000)   # -> AgentMessage
    reply = comm.request(content={"part": 3}, group="solvers")       # one live member of a group
    comm.broadcast(message)                            # every live subscriber of its type
    comm.subscribe("planner", [MessageType.NOTIFICATION])
    comm.get_history(limit=20)                         # the cluster's recent messages, newest last

An agent lives on a host node under the actor name ``agent/ID``; messages go host to host
directly, never through the leader. Where an agent lives comes from the replicated agent
directory, looked up once from the leader and cached per node (``DirectoryCache``); the cache
is refreshed when the leader's directory version moves (the host's heartbeat says so) and when
a send finds the target gone.

Guarantees:

* Point to point: at most once, in order per sender-receiver pair (one connection carries a
  pair's messages, and ZeroMQ keeps their order). A message that cannot be delivered is
  refused: the sending agent gets a ``Refused`` notice (``unknown_actor`` or ``mailbox_full``).
* A request ends exactly once: with the reply, or with one of these errors, never by hanging:
  ``AgentNotFound`` (no such agent in the directory: at once), ``AgentUnavailable`` (its host
  died or stopped: as soon as the connection to the host drops or is refused, and at the
  latest when the host's lease runs out and the directory drops it), ``AgentError`` (the
  handler raised: its exception type and text), ``MailboxFull`` (the agent's bounded mailbox
  is full), ``RequestTimeout`` (at the deadline).
* A group request goes to one live member (round robin) and moves on to the next member when
  one is unavailable, until the deadline.
* Broadcast reaches every live subscriber of the message's type over PUB/SUB; each publisher
  numbers its messages, so a receiver counts the ones it missed (``missed_broadcasts``).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from protocols.agents import (
    AgentEntry,
    AgentMessage,
    Deliver,
    DirectoryQuery,
    DirectoryView,
    HistoryEntry,
    HistoryRequest,
    MessageType,
    SubscribeRequest,
    check_agent_id,
    message_type,
    reply_type,
)
from protocols.names import AGENT_HOST_ACTOR, AGENTS_ACTOR
from protocols.wire import EncodeError, ErrorRecord, encode
from runtime.actor import current_actor_name
from runtime.client import Client, ClusterUnavailable, PeerUnreachable
from runtime.future import AskTimeout, RemoteError

if TYPE_CHECKING:
    from runtime.node import Node

DEFAULT_REQUEST_TIMEOUT_MS = 5000
HISTORY_CONTENT_LIMIT_BYTES = 1024  # bigger contents are left out of the history (their size is kept)
HISTORY_BUFFER_LIMIT = 50_000  # entries a host holds between two publications
BROADCAST_TOPIC = "agent.bcast."  # + message type
HISTORY_TOPIC = "agent.history"


class AgentCommunicationError(Exception):
    """Base of the errors a request ends with; ``name`` is what the CLI prints."""

    name = "AgentCommunicationError"

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.name}: {message}")
        self.detail = message


class AgentNotFound(AgentCommunicationError):
    name = "AgentNotFound"


class AgentUnavailable(AgentCommunicationError):
    name = "AgentUnavailable"


class AgentError(AgentCommunicationError):
    name = "AgentError"


class MailboxFull(AgentCommunicationError):
    name = "MailboxFull"


class RequestTimeout(AgentCommunicationError, TimeoutError):
    name = "RequestTimeout"


class AgentExists(AgentCommunicationError):
    name = "AgentExists"


def now_ms() -> int:
    return int(time.time() * 1000)


_MESSAGE_ID_PREFIX = uuid.uuid4().hex[:16]
_message_numbers = itertools.count(1)


def new_message_id() -> str:
    """Unique across processes (a random per-process prefix) and cheap (no urandom per message)."""
    return f"{_MESSAGE_ID_PREFIX}{next(_message_numbers):x}"


class HistoryRecorder:
    """What a node's agents handled and answered, waiting for its agent host to publish it.

    Agents (on their own threads) append the message itself: a message is immutable, so keeping
    it costs an append, and the rows for the history are made later by the host (on the
    transport thread), one batch at a time. A deque's append and popleft are atomic, so neither
    side waits for the other; past ``HISTORY_BUFFER_LIMIT`` messages the oldest go (``dropped``
    counts them, approximately)."""

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self._messages: collections.deque[AgentMessage] = collections.deque(maxlen=HISTORY_BUFFER_LIMIT)
        self.dropped = 0

    def record(self, message: AgentMessage) -> None:
        if len(self._messages) == HISTORY_BUFFER_LIMIT:
            self.dropped += 1
        self._messages.append(message)

    def drain(self, limit: int) -> list[list]:
        """Up to ``limit`` history rows (``protocols.agents.HISTORY_ROW``), oldest first; a content
        over ``HISTORY_CONTENT_LIMIT_BYTES`` is left out (its size is kept)."""
        messages = self._messages
        rows = []
        while messages and len(rows) < limit:
            m = messages.popleft()
            size = _encoded_size(m.content)
            rows.append([m.message_id, m.from_agent, m.to_agent, m.msg_type, m.timestamp_ms, m.correlation_id,
                         m.content if size <= HISTORY_CONTENT_LIMIT_BYTES else None, size])
        return rows


def _encoded_size(content: Any) -> int:
    if content is None or isinstance(content, (bool, int, float)):
        return 8
    if isinstance(content, (str, bytes)):
        return len(content)
    try:
        return len(encode(content))
    except EncodeError:
        return HISTORY_CONTENT_LIMIT_BYTES + 1


class DirectoryCache:
    """A node's copy of the agent directory: thread-safe, refreshed as a whole from the leader.

    One per node (``DirectoryCache.of(node)``), shared by the node's AgentCommunications and its
    agent host. ``client`` makes the blocking calls to the leader (lookups, registrations)."""

    _lock = threading.Lock()

    def __init__(self, node: Node) -> None:
        if not node.master_endpoints:
            raise ValueError(f"node {node.node_id} knows no masters: give it master_urls to talk to agents")
        self.node = node
        self.client = Client(node.master_endpoints, node=node)
        self.version = -1
        self.entries: dict[str, AgentEntry] = {}
        self.stats: dict[str, dict] = {}
        self.history = HistoryRecorder(node.node_id)
        self._turns = itertools.count()

    @classmethod
    def of(cls, node: Node) -> DirectoryCache:
        with cls._lock:
            cache = getattr(node, "agent_directory", None)
            if cache is None:
                cache = node.agent_directory = cls(node)
            return cache

    def replace(self, view: DirectoryView) -> None:
        entries = {entry.agent_id: entry for entry in view.entries if isinstance(entry, AgentEntry)}
        for entry in entries.values():
            self._know_keys(entry)
        self.entries, self.stats, self.version = entries, dict(view.stats), view.version

    def _know_keys(self, entry: AgentEntry) -> None:
        """With CURVE, connecting to a host needs its key: the directory carries it."""
        self.node.transport.know_server_key(entry.endpoint, entry.public_key)
        self.node.transport.know_server_key(entry.pub_endpoint, entry.public_key)

    def refresh(self, timeout_s: float = 2.0) -> None:
        """Read the whole directory from the leader (blocking)."""
        view = self.client.call(AGENTS_ACTOR, DirectoryQuery(None), timeout_s)
        if isinstance(view, DirectoryView) and view.version >= self.version:
            self.replace(view)

    def lookup(self, agent_id: str, timeout_s: float = 2.0) -> AgentEntry:
        """Where ``agent_id`` lives: from the cache, else from the leader; AgentNotFound if nowhere."""
        entry = self.entries.get(agent_id)
        if entry is None:
            view = self.client.call(AGENTS_ACTOR, DirectoryQuery([agent_id]), timeout_s)
            found = [e for e in getattr(view, "entries", []) if isinstance(e, AgentEntry)]
            if not found:
                raise AgentNotFound(f"no agent {agent_id!r} in the directory")
            entry = found[0]
            self._know_keys(entry)
            self.entries = {**self.entries, agent_id: entry}
        return entry

    def forget(self, agent_id: str) -> None:
        if agent_id in self.entries:
            entries = dict(self.entries)
            del entries[agent_id]
            self.entries = entries

    def group_members(self, group: str) -> list[AgentEntry]:
        """The members of ``group``, starting at the next one in turn (round robin)."""
        members = sorted((e for e in self.entries.values() if e.group == group), key=lambda e: e.agent_id)
        if not members:
            return []
        start = next(self._turns) % len(members)
        return members[start:] + members[:start]


class AgentCommunication:
    """An agent's (or a program's) way to talk to agents; see the module docstring."""

    def __init__(self, node: Node, agent_id: str | None = None) -> None:
        self.node = node
        self.agent_id = check_agent_id(agent_id) if agent_id else f"{node.node_id}/anonymous"
        self.directory = DirectoryCache.of(node)
        self.missed_broadcasts = 0

    # ------------------------------------------------------------------ messages

    def message(self, to_agent: str, content: Any, msg_type: str | MessageType = MessageType.NOTIFICATION,
                correlation_id: str | None = None) -> AgentMessage:
        """A new message from this agent (its id and timestamp filled in)."""
        return AgentMessage(new_message_id(), self.agent_id, to_agent, message_type(msg_type), content, now_ms(),
                            correlation_id)

    def send_to_agent(self, message: AgentMessage) -> None:
        """Put ``message`` in ``message.to_agent``'s mailbox (at most once, in order per pair).
        AgentNotFound if the directory has no such agent; an undeliverable message is refused
        back to the sending agent as a ``Refused`` notice."""
        entry = self.directory.lookup(message.to_agent)
        self.node.transport.send(entry.endpoint, entry.actor, message, current_actor_name())

    def deliver(self, message: AgentMessage, timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS) -> None:
        """``send_to_agent`` that waits until the message is in the mailbox (what the CLI uses):
        raises AgentNotFound, AgentUnavailable, MailboxFull or RequestTimeout otherwise."""
        self._ask(message.to_agent, lambda entry: Deliver(message, entry.actor), timeout_ms, actor=AGENT_HOST_ACTOR)

    def request(self, to_agent: str | None = None, content: Any = None, timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS,
                msg_type: str | MessageType = MessageType.TASK_REQUEST, group: str | None = None) -> AgentMessage:
        """Ask ``to_agent`` (or one live member of ``group``) and wait for the reply; returns the
        reply message. Ends with the reply or one of the errors of the module docstring."""
        if (to_agent is None) == (group is None):
            raise ValueError("request needs exactly one of to_agent and group")
        deadline = time.monotonic() + timeout_ms / 1000
        if to_agent is not None:
            message = self.message(to_agent, content, msg_type)
            return self._ask(to_agent, message, timeout_ms)
        members = self.directory.group_members(group)
        if not members:
            self.directory.refresh()
            members = self.directory.group_members(group)
        if not members:
            raise AgentNotFound(f"no live member in group {group!r}")
        unavailable = []
        for entry in members:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            try:
                return self._ask(entry.agent_id, self.message(entry.agent_id, content, msg_type), remaining_ms)
            except (AgentUnavailable, AgentNotFound, MailboxFull) as exc:
                unavailable.append(f"{entry.agent_id} ({exc.name})")
        if unavailable and len(unavailable) == len(members):
            raise AgentUnavailable(f"no member of group {group!r} could take it: {', '.join(unavailable)}")
        raise RequestTimeout(f"no member of group {group!r} answered within {timeout_ms} ms")

    def _ask(self, agent_id: str, body: Any, timeout_ms: int, actor: str | None = None) -> Any:
        """Ask ``agent_id``'s actor (or its host's ``actor``) and map what can go wrong to the
        request errors; ``body`` may be made from the agent's directory entry (a callable)."""
        deadline = time.monotonic() + timeout_ms / 1000
        try:
            entry = self.directory.lookup(agent_id, timeout_s=max(0.05, timeout_ms / 1000))
        except ClusterUnavailable as exc:
            raise RequestTimeout(f"the directory did not answer: {exc}") from None
        request = body(entry) if callable(body) else body
        # From this thread on a socket of its own (no hand-off to the transport thread and back).
        try:
            answer = self.directory.client.ask_at(entry.endpoint, actor or entry.actor, request,
                                                  max(0.0, deadline - time.monotonic()),
                                                  entry.public_key.encode() if entry.public_key else None)
            if isinstance(answer, ErrorRecord):  # a refusal answered as a value (the host's Deliver)
                raise RemoteError(answer.kind, answer.message)
            return answer
        except PeerUnreachable as exc:
            raise self._request_error(agent_id, entry, RemoteError("peer_unreachable", str(exc))) from None
        except AskTimeout:
            raise RequestTimeout(f"{agent_id} did not answer within {timeout_ms} ms") from None
        except RemoteError as exc:
            raise self._request_error(agent_id, entry, exc) from None

    def _request_error(self, agent_id: str, entry: AgentEntry, exc: RemoteError) -> AgentCommunicationError:
        if exc.kind == "agent_error":
            return AgentError(f"{agent_id} failed: {exc.message}")
        if exc.kind == "mailbox_full":
            return MailboxFull(f"{agent_id}'s mailbox is full")
        self.directory.forget(agent_id)
        if exc.kind == "unknown_actor":
            return AgentNotFound(f"{agent_id} is no longer on {entry.host_id}")
        if exc.kind in ("peer_unreachable", "actor_stopped"):
            return AgentUnavailable(f"{agent_id}'s host {entry.host_id} is unreachable ({exc.message})")
        return AgentError(f"{agent_id}: {exc.kind}: {exc.message}")

    def record(self, message: AgentMessage) -> None:
        """Keep ``message`` for the cluster's history (its host publishes it)."""
        self.directory.history.record(message)

    def reply_message(self, request: AgentMessage, content: Any) -> AgentMessage:
        """The reply to ``request``: from this agent, its type the request's answer type."""
        return AgentMessage(new_message_id(), self.agent_id, request.from_agent, reply_type(request.msg_type),
                            content, now_ms(), request.message_id)

    def broadcast(self, message: AgentMessage) -> None:
        """Publish ``message`` to every live subscriber of its type (over this node's PUB socket)."""
        self.node.publish(BROADCAST_TOPIC + message.msg_type, message)

    def subscribe(self, agent_id: str, msg_types: list[str | MessageType]) -> None:
        """Set the message types ``agent_id`` (hosted on this node) receives broadcasts of."""
        types = sorted({message_type(t) for t in msg_types})
        self.directory.client.call(AGENTS_ACTOR, SubscribeRequest(agent_id, self.node.node_id, types))

    def get_history(self, limit: int = 50, agent: str | None = None,
                    msg_type: str | MessageType | None = None) -> list[HistoryEntry]:
        """The cluster's latest agent messages, newest last (bounded: see the masters' options)."""
        kind = message_type(msg_type) if msg_type is not None else None
        return self.directory.client.call(AGENTS_ACTOR, HistoryRequest(limit, agent, kind))

    def agents(self) -> DirectoryView:
        """The whole directory, fresh from the leader."""
        return self.directory.client.call(AGENTS_ACTOR, DirectoryQuery(None))
