"""AgentActor: the base class of agents, which users subclass.

    class Reviewer(AgentActor):
        def on_message(self, message):            # an AgentMessage
            if message.msg_type == MessageType.TASK_REQUEST:
                return {"verdict": "ok"}          # a request's reply content
            self.comm.send_to_agent(self.comm.message("planner", "seen it"))

    node.spawn(Reviewer, agent_id="reviewer-1", group="reviewers", subscriptions=["notification"])

Rules:

* An agent is a pykka actor named ``agent/ID`` on any node that knows its cluster (a worker, a
  master, or a program's own ``Node(master_urls=...)``). Spawning registers it in the
  replicated agent directory (a committed command) before ``spawn`` returns; a duplicate id is
  refused with ``AgentExists`` while the first one's host is alive. Stopping it (or its node)
  removes it; if its host dies, the leader removes it once the host's lease runs out.
* Its mailbox is bounded (``mailbox_limit``, default ``DEFAULT_MAILBOX_LIMIT``): a message that
  would go over it is refused to its sender (``MailboxFull`` for a request, a ``Refused`` notice
  for an agent's plain send). Refusals are counted on the node. Spawned ``pinned=True``, its
  handler runs on the node's network thread instead (no hand-off, no queue): only for handlers
  that never block.
* ``on_message(message)`` handles every message; for a request its return value is the reply's
  content, like pykka's ``on_receive``. To answer later, return ``self.reply_later()`` and call
  ``self.reply(message, content)`` when the answer is ready. If the handler raises, a request
  fails with ``AgentError`` naming the exception; the agent keeps running.
* ``on_start`` and ``on_stop`` are pykka's, free for the subclass; the registration work
  happens around them (``after_spawn`` and ``before_stop``).
* Every message the agent handles goes into the cluster's bounded message history (envelope
  and, when small, content) through its host.
"""

from __future__ import annotations

import collections
from typing import Any

from actors.agent_host import Broadcast, Hosted, Unhosted, host_of
from protocols.agents import (
    AgentEntry,
    AgentMessage,
    RegisterAgentRequest,
    UnregisterAgentRequest,
    agent_actor_name,
    check_agent_id,
    message_type,
)
from protocols.names import AGENTS_ACTOR
from protocols.wire import ASK, Refused
from runtime.actor import Actor, Deferred
from runtime.agents import AgentCommunication, AgentExists, RequestTimeout
from runtime.client import ClusterUnavailable
from runtime.future import RemoteError
from runtime.log import get_logger

log = get_logger("agent")

DEFAULT_MAILBOX_LIMIT = 10_000
REGISTER_TIMEOUT_S = 10.0
UNREGISTER_TIMEOUT_S = 2.0
MAX_PENDING_REPLIES = 10_000  # answers promised with reply_later and not given yet


class AgentActor(Actor):
    """Subclass it and implement ``on_message``; see the module docstring."""

    default_mailbox_limit = DEFAULT_MAILBOX_LIMIT

    def __init__(self, agent_id: str, group: str = "", subscriptions: list | tuple = ()) -> None:
        super().__init__()
        self.agent_id = check_agent_id(agent_id)
        self.group = group or ""
        if self.group:
            check_agent_id(self.group, "group")
        self.subscriptions = sorted({message_type(t) for t in subscriptions})
        self.comm = AgentCommunication(self.node, self.agent_id)
        self._pending_replies: collections.OrderedDict[str, Deferred] = collections.OrderedDict()
        self._handling: AgentMessage | None = None

    @classmethod
    def actor_name(cls, *args: Any, agent_id: str | None = None, **kwargs: Any) -> str:
        return agent_actor_name(agent_id if agent_id is not None else args[0])

    # ------------------------------------------------------------------ for subclasses

    def on_message(self, message: AgentMessage) -> Any:
        """Handle one message; for a request, the return value is the reply's content."""
        raise NotImplementedError(f"{type(self).__name__} must implement on_message")

    def on_refused(self, refused: Refused) -> None:
        """A message this agent sent was not delivered (``refused.reason``: mailbox_full or
        unknown_actor); ``refused.body`` is the message. Override to react; the default logs."""
        log.debug("Agent %s: a message to %s was refused (%s)", self.agent_id, refused.destination, refused.reason)

    def reply_later(self) -> Deferred:
        """Return this from ``on_message`` to answer the request being handled later."""
        if self._handling is None or self._inbound is None or self._inbound.kind != ASK:
            raise RuntimeError("reply_later() is for the request being handled")
        deferred = self.defer()
        self._pending_replies[self._handling.message_id] = deferred
        if len(self._pending_replies) > MAX_PENDING_REPLIES:
            _, oldest = self._pending_replies.popitem(last=False)
            oldest.fail("agent_error", "the agent dropped this request: too many pending replies")
        return deferred

    def reply(self, message: AgentMessage, content: Any) -> None:
        """Answer the request ``message`` (one handled earlier with ``reply_later``)."""
        deferred = self._pending_replies.pop(message.message_id, None)
        if deferred is None:
            raise KeyError(f"no pending request {message.message_id} (answered, dropped, or never deferred)")
        deferred.resolve(self._reply_message(message, content))

    # ------------------------------------------------------------------ registration

    def entry(self) -> AgentEntry:
        curve = self.node.curve
        return AgentEntry(self.agent_id, self.node.node_id, self.node.endpoint, self.node.pub_endpoint, self.group,
                          list(self.subscriptions), curve.public_key.decode() if curve is not None else "")

    def after_spawn(self) -> None:
        host = host_of(self.node)
        entry = self.entry()
        try:
            self.comm.directory.client.call(AGENTS_ACTOR, RegisterAgentRequest(entry), REGISTER_TIMEOUT_S)
        except RemoteError as exc:
            if exc.kind == "agent_exists":
                raise AgentExists(exc.message) from None
            raise
        except ClusterUnavailable as exc:
            raise RequestTimeout(f"agent {self.agent_id} could not register: {exc}") from None
        host.tell(Hosted(entry))
        log.info("Agent %s started on %s%s", self.agent_id, self.node.node_id,
                 f" (group {self.group})" if self.group else "")

    def before_stop(self) -> None:
        host_of(self.node).tell(Unhosted(self.agent_id))
        try:
            self.comm.directory.client.call(AGENTS_ACTOR, UnregisterAgentRequest(self.agent_id, self.node.node_id),
                                            UNREGISTER_TIMEOUT_S)
        except (RemoteError, ClusterUnavailable) as exc:  # the host's lease will remove it
            log.debug("Agent %s: unregister failed: %s", self.agent_id, exc)
        log.info("Agent %s stopped", self.agent_id)

    # ------------------------------------------------------------------ messages

    def receive(self, message: Any) -> Any:
        if type(message) is Broadcast:
            self.comm.missed_broadcasts += message.missed
            message = message.message
        if isinstance(message, AgentMessage):
            return self._handle(message)
        if isinstance(message, Refused):
            if message.reason == "unknown_actor" and isinstance(message.body, AgentMessage):
                self.comm.directory.forget(message.body.to_agent)
            self.on_refused(message)
            return None
        return self.on_message(message)

    def _handle(self, message: AgentMessage) -> Any:
        is_request = self._inbound is not None and self._inbound.kind == ASK
        self.comm.record(message)
        self._handling = message
        try:
            content = self.on_message(message)
        except Exception as exc:
            self.node.count("agent_handler_errors")
            if not is_request:
                log.warning("Agent %s failed on a %s message: %r", self.agent_id, message.msg_type, exc)
                return None
            failed = self.defer()
            failed.fail("agent_error", f"{type(exc).__name__}: {exc}")
            return failed
        finally:
            self._handling = None
        if not is_request or isinstance(content, Deferred):
            return content
        return self._reply_message(message, content)

    def _reply_message(self, request: AgentMessage, content: Any) -> AgentMessage:
        reply = self.comm.reply_message(request, content)
        self.comm.record(reply)
        return reply
