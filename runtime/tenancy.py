"""A node's gate for tenants: what a message from a tenant's key may reach, and what it reads back.

    node.install_gate(MasterGate(node, state=lambda: control.state, leads=lambda: ...))   # masters

The transport tags each inbound message with its sender's tenant (runtime/security.py) and
hands a tenant's messages to ``admit(destination, message)`` before any actor sees them;
``Node.answer`` hands every answer to one through ``reply``. Operators' messages (and every
message without CURVE) pass untouched: this is the one place tenants are enforced.

Rules:

* Every node has a gate (``TenantGate``): a tenant reaches only agents, and only on a host whose
  own key is that tenant's (an agent is its host's tenant's); anything else is ``forbidden``.
* A master's gate (``MasterGate``) scopes a tenant's requests to the control-plane actors and
  un-scopes their answers with protocols/tenants.py, and refuses what would take the tenant over
  a quota (pending workflows, locks held), checked on the leader against its applied state
  (running tasks are no refusal: the dispatch caps them, protocols/tenant_caps.py).
* A refusal answers an ask with an ``ErrorRecord`` and is counted (``rejected_<kind>``); a
  refused tell is only counted. Runs on the transport thread (the one that applies the state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from protocols.agents import AGENT_ACTOR_PREFIX
from protocols.control import ControlState
from protocols.names import AGENT_HOST_ACTOR
from protocols.tenants import UNLIMITED, quota_refusal, scope_request, unscope_error, unscope_reply
from protocols.wire import ASK, ErrorRecord
from runtime.log import get_logger
from runtime.messages import InboundMessage

if TYPE_CHECKING:
    from runtime.node import Node

log = get_logger("tenancy")


def is_agent_actor(destination: str) -> bool:
    return destination == AGENT_HOST_ACTOR or destination.startswith(AGENT_ACTOR_PREFIX)


class TenantGate:
    """Every node's gate: a tenant may talk to the agents of a host of its own, nothing else."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def gatekeeper(self):
        return self.node.transport.gatekeeper

    def admit(self, destination: str, message: InboundMessage) -> bool:
        tenant = message.tenant
        if is_agent_actor(destination):
            if tenant == self.gatekeeper.own_tenant:
                return True
            return self.refuse(message, ErrorRecord("forbidden", f"tenant {tenant} may not reach the agents "
                                                                 f"on {self.node.node_id}: they are not its own"))
        return self.refuse(message, ErrorRecord("forbidden", f"tenant {tenant} may not send "
                                                             f"{type(message.body).__name__} to {destination!r}"))

    def reply(self, message: InboundMessage, value: Any, error: ErrorRecord | None) -> tuple[Any, ErrorRecord | None]:
        """The answer to a tenant's message as it leaves (``Node.answer``)."""
        return value, error

    def refuse(self, message: InboundMessage, error: ErrorRecord) -> bool:
        self.node.count(f"rejected_{error.kind}")
        if message.kind == ASK:
            self.node.answer(message, None, error)
        return False


class MasterGate(TenantGate):
    """A master's gate: a tenant's requests to the control plane are scoped to its names and
    held to its quotas. ``state()`` is the replicated state as applied here, ``leads()`` whether
    this master leads (only the leader checks quotas: a follower redirects anyway)."""

    def __init__(self, node: Node, state: Callable[[], ControlState], leads: Callable[[], bool]) -> None:
        super().__init__(node)
        self.state = state
        self.leads = leads

    def admit(self, destination: str, message: InboundMessage) -> bool:
        if is_agent_actor(destination):
            return super().admit(destination, message)
        tenant = message.tenant
        gatekeeper = self.gatekeeper
        scoped = scope_request(tenant, destination, message.body, gatekeeper.tenant_keys.get(tenant, ()))
        if type(scoped) is ErrorRecord:
            return self.refuse(message, scoped)
        if self.leads():
            refusal = quota_refusal(tenant, scoped, gatekeeper.quotas.get(tenant, UNLIMITED), self.state())
            if refusal is not None:
                return self.refuse(message, refusal)
        message.body = scoped
        return True

    def reply(self, message: InboundMessage, value: Any, error: ErrorRecord | None) -> tuple[Any, ErrorRecord | None]:
        tenant = message.tenant
        try:
            if error is not None:
                return value, unscope_error(tenant, error)
            return unscope_reply(tenant, message.body, value), None
        except Exception:  # it runs inside whatever answers (an apply's callback): never raise there
            self.node.count("tenant_reply_errors")
            log.exception("cannot scope an answer to tenant %s", tenant)
            return None, ErrorRecord("internal_error", "the answer could not be scoped to your tenant")
