"""AgentDirectoryActor: the agent directory's service on every master (named "agents").

Role: the replicated directory itself is ``ControlState.agents`` (protocols/agents.py), changed
only by committed ``agent.*`` commands. This actor turns hosts' requests into those commands
and answers from the state:

* on the leader: registrations (refused with ``agent_exists`` while the id's host is alive),
  unregistrations and subscription changes, proposed and answered once applied; host
  heartbeats, which renew the host's lease (soft state); a host whose lease runs out is
  removed with all its agents (``RemoveAgentHost``); directory lookups; broadcasts sent from
  outside any host (the CLI), relayed to the hosts that have a subscriber;
* on every master: the bounded message history, fed by the hosts' ``agent.history`` events
  (every master subscribes to every host in the directory, so a new leader already has it).

Rules: requests that need the leader's view are redirected by followers. A new leader gives
every host it inherits one full lease before it can expire. Spawned pinned; it never blocks.
It proposes, watches and reads the directory through the ``ControlPlane`` the master hands it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from actors.control_plane import Applied, ControlPlane, LeadershipChanged
from protocols.agents import (
    AgentHostAck,
    AgentHostHeartbeat,
    AgentMessage,
    BroadcastRequest,
    DirectoryQuery,
    DirectoryView,
    HistoryRequest,
    HostLeases,
    MessageHistory,
    RegisterAgent,
    RegisterAgentRequest,
    RemoveAgentHost,
    SetSubscriptions,
    SubscribeRequest,
    UnregisterAgent,
    UnregisterAgentRequest,
)
from protocols.names import AGENT_HOST_ACTOR
from protocols.wire import ErrorRecord, Event, Tick
from runtime.actor import Actor
from runtime.agents import HISTORY_TOPIC
from runtime.log import get_logger

log = get_logger("agent")

# Hosts heartbeat every 0.5 s. A host that dies is found out sooner, by its dropped connections;
# the lease is for a host the network cut off, and must outlast a stall of a loaded machine.
DEFAULT_HOST_LEASE_MS = 5000
DEFAULT_HISTORY_SIZE = 10_000
TICK_S = 0.25
PROPOSE_TIMEOUT_S = 5.0
_LEADER_ONLY = (RegisterAgentRequest, UnregisterAgentRequest, SubscribeRequest, AgentHostHeartbeat,
                DirectoryQuery, BroadcastRequest)


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class AgentDirectoryActor(Actor):
    def __init__(self, control: ControlPlane, host_lease_ms: int = DEFAULT_HOST_LEASE_MS,
                 history_size: int = DEFAULT_HISTORY_SIZE) -> None:
        super().__init__()
        self.control = control
        self.leases = HostLeases(host_lease_ms)
        self.history = MessageHistory(history_size)
        self.is_leader = False
        self.stats: dict[str, dict] = {}  # agent id -> its mailbox figures, as last heartbeaten
        self._history_publishers: set[str] = set()
        self._timer_id: int | None = None

    def on_start(self) -> None:
        self.me = self.node.lookup(self.address)
        self.control.watch("agent.", self.me)
        self._timer_id = self.node.every(TICK_S, self.me, "agents")
        self._follow_history()

    def on_stop(self) -> None:
        if self._timer_id is not None:
            self.node.cancel_timer(self._timer_id)

    @property
    def directory(self):
        return self.control.state.agents

    # ------------------------------------------------------------------ messages

    def receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is Event:
            body = message.body
            if message.topic == HISTORY_TOPIC and isinstance(body, dict) and isinstance(body.get("rows"), list):
                self.history.add(str(body.get("host")), body["rows"])
            return None
        if kind is Applied:
            self._follow_history()
            return None
        if kind is LeadershipChanged:
            self._on_leadership(message.is_leader)
            return None
        if kind is Tick:
            if self.is_leader:
                self._expire_hosts()
            return None
        if kind is HistoryRequest:
            return self.history.query(message.limit, message.agent, message.msg_type)
        if kind in _LEADER_ONLY and not self.is_leader:
            return self.control.redirect()
        if kind is AgentHostHeartbeat:
            return self._on_heartbeat(message)
        if kind is DirectoryQuery:
            return self._view(message.agent_ids)
        if kind is RegisterAgentRequest:
            return self._register(message)
        if kind is UnregisterAgentRequest:
            return self._commit(UnregisterAgent(message.agent_id, message.host_id), "not_registered")
        if kind is SubscribeRequest:
            return self._commit(SetSubscriptions(message.agent_id, message.host_id, list(message.subscriptions)),
                                "not_registered")
        if kind is BroadcastRequest:
            return self._relay(message.message, message.agent_prefix)
        return ErrorRecord("unknown_message", kind.__name__)

    # ------------------------------------------------------------------ leader

    def _on_leadership(self, is_leader: bool) -> None:
        self.is_leader = is_leader
        self.leases.clear()
        if is_leader:
            self.leases.grant_grace(list(self.directory.hosts()), monotonic_ms())

    def _on_heartbeat(self, heartbeat: AgentHostHeartbeat) -> AgentHostAck:
        self.leases.renew(heartbeat.host_id, monotonic_ms())
        for agent_id, depth in heartbeat.mailbox_depths.items():
            self.stats[agent_id] = {"mailbox_depth": depth,
                                    "messages_handled": heartbeat.messages_handled.get(agent_id, 0)}
        return AgentHostAck(self.directory.version)

    def _expire_hosts(self) -> None:
        hosts = self.directory.hosts()
        for host_id in self.leases.expired(monotonic_ms()):
            if host_id in hosts:
                log.info("Agent host %s missed its heartbeats: its agents %s leave the directory", host_id,
                         ", ".join(self.directory.on_host(host_id)))
                self._propose(RemoveAgentHost(host_id, "lease expired"), lambda result: None)

    def _register(self, request: RegisterAgentRequest) -> Any:
        entry = request.entry
        current = self.directory.get(entry.agent_id)
        if current is not None and current.host_id != entry.host_id \
                and self.leases.alive(current.host_id, monotonic_ms()):
            return ErrorRecord("agent_exists", f"agent {entry.agent_id!r} already runs on {current.host_id}")
        self.leases.renew(entry.host_id, monotonic_ms())
        replaces = current.host_id if current is not None else None
        return self._commit(RegisterAgent(entry, replaces), "agent_exists",
                            f"agent {entry.agent_id!r} was registered by another host meanwhile")

    def _commit(self, command: Any, refusal: str, refusal_text: str = "") -> Any:
        """Propose ``command`` and answer with its result once applied (a refusal as an error)."""
        answer = self.defer()

        def applied(result: Any) -> None:
            if isinstance(result, ErrorRecord):
                answer.fail(result.kind, result.message)
            elif isinstance(result, dict) and not result.get("ok"):
                answer.fail(refusal, refusal_text or str(result.get("reason")))
            else:
                answer.resolve(result)

        self._propose(command, applied)
        return answer

    def _propose(self, command: Any, on_applied: Callable[[Any], None]) -> None:
        def done(future) -> None:
            try:
                result = future.get(0)
            except Exception as exc:
                result = ErrorRecord(getattr(exc, "kind", "not_committed"), str(exc))
            on_applied(result)

        self.control.propose(command, PROPOSE_TIMEOUT_S).add_done_callback(done)

    def _view(self, agent_ids: list | None) -> DirectoryView:
        if agent_ids is None:
            entries = list(self.directory.entries.values())
        else:
            entries = [entry for agent_id in agent_ids if (entry := self.directory.get(agent_id)) is not None]
        stats = {entry.agent_id: self.stats[entry.agent_id] for entry in entries if entry.agent_id in self.stats}
        return DirectoryView(self.directory.version, entries, stats)

    def _relay(self, message: Any, agent_prefix: str) -> Any:
        if not isinstance(message, AgentMessage) or not isinstance(agent_prefix, str):
            return ErrorRecord("bad_request", "a broadcast carries an AgentMessage")
        hosts = {entry.endpoint: entry for entry in self.directory.entries.values()
                 if message.msg_type in entry.subscriptions and entry.agent_id.startswith(agent_prefix)}
        for endpoint, entry in hosts.items():
            self.node.transport.know_server_key(endpoint, entry.public_key)
            self.node.ref(endpoint, AGENT_HOST_ACTOR, entry.host_id).tell(message)
        return {"hosts": len(hosts)}

    # ------------------------------------------------------------------ every master

    def _follow_history(self) -> None:
        """Subscribe to the history of every host in the directory, and no longer to gone ones."""
        publishers = set(self.directory.hosts().values())
        keys = {entry.pub_endpoint: entry.public_key for entry in self.directory.entries.values()}
        for pub_endpoint in sorted(publishers - self._history_publishers):
            self.node.transport.know_server_key(pub_endpoint, keys.get(pub_endpoint, ""))
            self.node.subscribe(pub_endpoint, HISTORY_TOPIC, self.me)
        for pub_endpoint in self._history_publishers - publishers:
            self.node.transport.unsubscribe_publisher(pub_endpoint)
        self._history_publishers = publishers
