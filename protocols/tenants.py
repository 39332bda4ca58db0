"""Tenants: whose names a request may touch, and how much of the cluster a tenant may hold.

A tenant is a group of CURVE keys (``--authorized-keys DIR``: ``DIR/TENANT/*.key``; the keys of
``DIR/*.key`` are operators'). Every name a tenant sends (workflow ids, lock keys, agent ids,
agent groups, agent host ids, client session ids) is stored under its prefix, ``TENANT:name``,
and every name it reads back has the prefix taken off; listings show only its own rows. So a
tenant cannot name anything outside its prefix, and two tenants may use the same names. An
operator sees and touches every name, the prefixed ones included.

The masters apply this module in one place (runtime/tenancy.py) to each request from a tenant's
key, before the actor sees it, and to the actor's answer; the actors never know tenants exist.

Rules of this module:

* Pure: records in, records out, no I/O. The separator is ``:`` because workflow ids hold no
  ``/`` (a task's cluster-wide key is ``wf/task``).
* ``scope_request`` never raises, whatever the network sends: a malformed request is
  ``bad_request``.
* An allow-list: a tenant may send only the requests ``scope_request`` knows (workflows, locks,
  agents, the cluster's and workers' status); anything else (raw Raft ``Propose``/``Read``,
  membership changes, leadership transfer, worker and Raft traffic, the operator's overview,
  the agents' message history, a record it has never heard of) is ``forbidden``, naming the
  request. A request whose names are not strings is ``bad_request``.
* Quotas (``Quotas``, from ``DIR/TENANT/quotas.yaml``): ``quota_refusal`` checks pending
  workflows and locks held against the state as applied on the leader when the request
  arrives: a request already in flight is not counted, so a burst of concurrent requests may
  overshoot a quota by what is in flight. Running tasks are no refusal: the dispatch caps
  them (``running_caps``, protocols/tenant_caps.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Collection

from protocols.agents import (
    AgentEntry,
    AgentHostHeartbeat,
    BroadcastRequest,
    DirectoryQuery,
    DirectoryView,
    RegisterAgentRequest,
    SubscribeRequest,
    UnregisterAgentRequest,
    agent_actor_name,
)
from protocols.control import (
    CancelWorkflowRequest,
    ClientCommand,
    ControlState,
    StatusQuery,
    SubmitWorkflowRequest,
    WorkersRequest,
    WorkflowStatusRequest,
)
from protocols.locks import (
    CLIENT_LOCK_COMMANDS,
    Acquire,
    LockCall,
    LockDenied,
    LockGranted,
    LockInfo,
    LockNotHeld,
    LockQueued,
    LockReleased,
    LockRenewed,
    LockShow,
    WaitCancelled,
)
from protocols.names import AGENTS_ACTOR, LOCK_ACTOR, RAFT_ACTOR, SCHEDULER_ACTOR
from protocols.sessions import ClientSessions
from protocols.wire import ErrorRecord, Redirect
from protocols.workflow_spec import Workflow

SEPARATOR = ":"
QUOTAS_FILE = "quotas.yaml"
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_tenant_name(name: Any) -> str:
    """A tenant's name (its folder's name): letters, digits, ``_ . -``, at most 64 characters."""
    if not isinstance(name, str) or not _TENANT_NAME.fullmatch(name):
        raise ValueError(f"bad tenant name {name!r}: letters, digits, '_', '.', '-' (not first), at most 64")
    return name


def prefix(tenant: str) -> str:
    return tenant + SEPARATOR


# --------------------------------------------------------------------------- quotas


@dataclasses.dataclass(frozen=True)
class Quotas:
    """What one tenant may hold at once; None is unlimited. ``running_tasks`` is not a refusal
    but the dispatch's cap on how many of its tasks run at once (protocols/tenant_caps.py)."""

    running_tasks: int | None = None
    pending_workflows: int | None = None  # unfinished: pending or running
    locks_held: int | None = None


UNLIMITED = Quotas()
QUOTA_NAMES = tuple(field.name for field in dataclasses.fields(Quotas))


def parse_quotas(data: Any, where: str = QUOTAS_FILE) -> Quotas:
    """``{"pending_workflows": 10, "locks_held": 5, "running_tasks": 4}`` (any of them; an empty
    file is no quota) -> Quotas; ValueError naming ``where`` and the key otherwise."""
    if data is None:
        return UNLIMITED
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a map of quotas ({', '.join(QUOTA_NAMES)}), not {type(data).__name__}")
    for key, value in data.items():
        if key not in QUOTA_NAMES:
            raise ValueError(f"{where}: unknown quota {key!r} (known: {', '.join(QUOTA_NAMES)})")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{where}: quota {key} must be a non-negative integer (or null: unlimited), not {value!r}")
    return Quotas(**data)


def running_caps(quotas: dict[str, Quotas]) -> dict[str, int]:
    """Each tenant's ``running_tasks`` quota, for the tenants that have one (the dispatch's caps)."""
    return {tenant: quota.running_tasks for tenant, quota in sorted(quotas.items()) if quota.running_tasks is not None}


def _unfinished(tenant: str, state: ControlState) -> int:
    mine = prefix(tenant)
    return sum(1 for workflow_id, graph in state.workflows.graphs.items()
               if workflow_id.startswith(mine) and not graph.is_workflow_completed())


def _held(tenant: str, state: ControlState) -> int:
    mine, locks = prefix(tenant), state.locks
    return sum(1 for info in locks.list_locks(locks.clock_ms) if info.key.startswith(mine))


def _over(tenant: str, quota: str, limit: int, count: int, what: str) -> ErrorRecord:
    return ErrorRecord("quota_exceeded", f"tenant {tenant} is at its quota {quota}={limit} ({count} {what}); "
                                         f"refused until it holds fewer")


def quota_refusal(tenant: str, request: Any, quotas: Quotas, state: ControlState) -> ErrorRecord | None:
    """The refusal of a scoped ``request`` that would take ``tenant`` over its ``quotas`` in
    the applied ``state``, or None. Only what starts something new counts: a submit (not a
    retry the sessions already answered), an acquire of a key nobody holds."""
    if type(request) is SubmitWorkflowRequest and quotas.pending_workflows is not None:
        if state.sessions.check(request.client_id, request.seq)[0] != ClientSessions.NEW \
                or request.workflow.workflow_id in state.workflows:
            return None  # answered from its session, or refused as a duplicate: nothing new
        count = _unfinished(tenant, state)
        if count >= quotas.pending_workflows:
            return _over(tenant, "pending_workflows", quotas.pending_workflows, count, "unfinished workflows")
    if type(request) is LockCall and quotas.locks_held is not None:
        acquire = _lock_command(request)
        if type(acquire) is not Acquire:
            return None
        locks = state.locks
        if locks.check_lock(acquire.key, locks.clock_ms) is not None:
            return None  # held already (by this owner: a renewal; by another: denied or queued)
        count = _held(tenant, state)
        if count >= quotas.locks_held:
            return _over(tenant, "locks_held", quotas.locks_held, count, "locks held")
    return None


# --------------------------------------------------------------------------- requests


class _Refusal(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.record = ErrorRecord(kind, message)


def _checked(name: Any) -> str:
    if not isinstance(name, str):
        raise _Refusal("bad_request", f"a name must be a string, not {name!r}")
    return name


def _scoped(tenant: str, name: Any) -> str:
    return prefix(tenant) + _checked(name)


def _scoped_or_none(tenant: str, name: Any) -> str | None:
    return None if name is None else _scoped(tenant, name)


def _lock_command(call: LockCall) -> Any:
    return call.command.body if isinstance(call.command, ClientCommand) else call.command


def _scope_workflow(tenant: str, workflow: Workflow) -> Workflow:
    tasks = [task if task.agent is None and task.agent_group is None else dataclasses.replace(
                 task, agent=_scoped_or_none(tenant, task.agent), agent_group=_scoped_or_none(tenant, task.agent_group))
             for task in workflow.tasks] if isinstance(workflow.tasks, list) else workflow.tasks
    return dataclasses.replace(workflow, workflow_id=_scoped(tenant, workflow.workflow_id), tasks=tasks)


def _scope_entry(tenant: str, entry: AgentEntry, tenant_keys: Collection[str]) -> AgentEntry:
    # Whoever reaches this agent (an operator's worker running the tenant's agent task, say)
    # connects to its endpoint with its key, so the endpoint must be a host holding one of the
    # tenant's keys; and it asks the actor the host runs the agent under, whatever the tenant
    # claims. So an entry can lead an operator's node to nothing but the tenant's own agents.
    if entry.public_key not in tenant_keys:
        raise _Refusal("forbidden", f"an agent of tenant {tenant} must be hosted with one of its own keys")
    return dataclasses.replace(entry, agent_id=_scoped(tenant, entry.agent_id), host_id=_scoped(tenant, entry.host_id),
                               group=_scoped(tenant, entry.group) if entry.group else "",
                               actor_name=agent_actor_name(_checked(entry.agent_id)))


def _scope_lock_call(tenant: str, call: LockCall) -> Any:
    command = call.command
    body = _lock_command(call)
    if type(body) not in CLIENT_LOCK_COMMANDS:
        return None
    body = dataclasses.replace(body, key=_scoped(tenant, body.key))
    if isinstance(command, ClientCommand):
        command = ClientCommand(_scoped(tenant, command.client_id), command.seq, body)
    else:
        command = body
    return dataclasses.replace(call, command=command)


def _scope_dict_keys(tenant: str, values: Any) -> dict:
    return {_scoped(tenant, key): value for key, value in values.items()} if isinstance(values, dict) else {}


def _scope(tenant: str, destination: str, body: Any, tenant_keys: Collection[str]) -> Any:
    """The scoped request, or None when a tenant may not send it. Each is rebuilt field by
    field, so a field added to a request later is dropped until it is scoped or passed on here
    (tests/test_tenants.py lists the fields this knows)."""
    kind = type(body)
    if destination == SCHEDULER_ACTOR:
        if kind is SubmitWorkflowRequest and isinstance(body.workflow, Workflow):
            return SubmitWorkflowRequest(_scope_workflow(tenant, body.workflow), _scoped(tenant, body.client_id),
                                         body.seq)
        if kind is CancelWorkflowRequest:
            return CancelWorkflowRequest(_scoped(tenant, body.workflow_id), _scoped(tenant, body.client_id), body.seq)
        if kind is WorkflowStatusRequest:
            return WorkflowStatusRequest(_scoped_or_none(tenant, body.workflow_id), body.tasks, body.summary)
        if kind is WorkersRequest:
            return body
    elif destination == LOCK_ACTOR:
        if kind is LockCall:
            return _scope_lock_call(tenant, body)
        if kind is LockShow:
            return LockShow(_scoped_or_none(tenant, body.key))
    elif destination == AGENTS_ACTOR:
        if kind is RegisterAgentRequest and isinstance(body.entry, AgentEntry):
            return RegisterAgentRequest(_scope_entry(tenant, body.entry, tenant_keys))
        if kind is UnregisterAgentRequest:
            return UnregisterAgentRequest(_scoped(tenant, body.agent_id), _scoped(tenant, body.host_id))
        if kind is SubscribeRequest:
            return SubscribeRequest(_scoped(tenant, body.agent_id), _scoped(tenant, body.host_id), body.subscriptions)
        if kind is AgentHostHeartbeat:
            return AgentHostHeartbeat(_scoped(tenant, body.host_id), body.endpoint,
                                      _scope_dict_keys(tenant, body.mailbox_depths),
                                      _scope_dict_keys(tenant, body.messages_handled))
        if kind is DirectoryQuery:
            ids = body.agent_ids
            return DirectoryQuery([_scoped(tenant, i) for i in ids] if isinstance(ids, list) else None)
        if kind is BroadcastRequest:
            return dataclasses.replace(body, agent_prefix=prefix(tenant))
    elif destination == RAFT_ACTOR:
        if kind is StatusQuery:
            return StatusQuery()  # without the digest, which encodes the whole state
    return None


def scope_request(tenant: str, destination: str, body: Any, tenant_keys: Collection[str] = ()) -> Any:
    """``body`` (sent by ``tenant`` to the actor ``destination`` of a master) with every name it
    carries moved under the tenant's prefix; or the ErrorRecord refusing it. ``tenant_keys``
    are the tenant's public keys (Z85 text): the only keys its agents' hosts may have."""
    try:
        scoped = _scope(tenant, destination, body, tenant_keys)
    except _Refusal as refusal:
        return refusal.record
    except Exception as exc:  # a record of the right type with parts of the wrong ones (a task that is a map)
        return ErrorRecord("bad_request", f"{type(body).__name__} is malformed ({type(exc).__name__})")
    if scoped is None:
        return ErrorRecord("forbidden", f"tenant {tenant} may not send {type(body).__name__} to {destination!r} "
                                        "(operators only)")
    return scoped


# --------------------------------------------------------------------------- answers


def _strip(tenant: str, name: Any) -> Any:
    mine = prefix(tenant)
    return name[len(mine):] if isinstance(name, str) and name.startswith(mine) else name


def _mine(tenant: str, name: Any) -> bool:
    return isinstance(name, str) and name.startswith(prefix(tenant))


def unscope_error(tenant: str, error: ErrorRecord) -> ErrorRecord:
    """An error's text without the tenant's prefix in the names it quotes."""
    message = error.message
    if isinstance(message, str) and prefix(tenant) in message:
        return ErrorRecord(error.kind, message.replace(prefix(tenant), ""))
    return error


def _unscope_workflow_row(tenant: str, row: Any) -> Any:
    return {**row, "workflow_id": _strip(tenant, row.get("workflow_id"))} if isinstance(row, dict) else row


def _unscope_applied(tenant: str, result: Any) -> Any:
    """A workflow command's result (``{"ok", "reason", "ready", "released", "finished", ...}``)."""
    if not isinstance(result, dict):
        return result
    out = dict(result)
    for key in ("ready", "released", "finished"):
        if isinstance(out.get(key), list):
            out[key] = [_strip(tenant, name) for name in out[key]]
    if isinstance(out.get("reason"), str):
        out["reason"] = out["reason"].replace(prefix(tenant), "")
    return out


def _unscope_entry(tenant: str, entry: AgentEntry) -> AgentEntry:
    return dataclasses.replace(entry, agent_id=_strip(tenant, entry.agent_id), host_id=_strip(tenant, entry.host_id),
                               group=_strip(tenant, entry.group))


def _unscope_view(tenant: str, view: DirectoryView) -> DirectoryView:
    entries = [_unscope_entry(tenant, e) for e in view.entries if isinstance(e, AgentEntry) and _mine(tenant, e.agent_id)]
    stats = {_strip(tenant, agent_id): figures for agent_id, figures in view.stats.items() if _mine(tenant, agent_id)}
    return DirectoryView(view.version, entries, stats)


_LOCK_REPLIES = (LockGranted, LockDenied, LockQueued, LockReleased, LockRenewed, LockNotHeld, WaitCancelled, LockInfo)


def _unscope_lock_reply(tenant: str, reply: Any) -> Any:
    if type(reply) in _LOCK_REPLIES:
        return dataclasses.replace(reply, key=_strip(tenant, reply.key))
    return reply


def unscope_reply(tenant: str, request: Any, value: Any) -> Any:
    """The answer to ``tenant``'s scoped ``request``, as the tenant sees it: its own rows only,
    without its prefix."""
    if isinstance(value, ErrorRecord):
        return unscope_error(tenant, value)
    if isinstance(value, Redirect):
        return value
    kind = type(request)
    if kind is WorkflowStatusRequest:
        if isinstance(value, list):
            return [_unscope_workflow_row(tenant, row) for row in value
                    if isinstance(row, dict) and _mine(tenant, row.get("workflow_id"))]
        return _unscope_workflow_row(tenant, value)
    if kind in (SubmitWorkflowRequest, CancelWorkflowRequest):
        return _unscope_applied(tenant, value)
    if kind is LockShow:
        if isinstance(value, list):
            return [_unscope_lock_reply(tenant, info) for info in value if _mine(tenant, getattr(info, "key", None))]
        return _unscope_lock_reply(tenant, value)
    if kind is LockCall:
        return _unscope_lock_reply(tenant, value)
    if kind is DirectoryQuery and isinstance(value, DirectoryView):
        return _unscope_view(tenant, value)
    if kind is RegisterAgentRequest and isinstance(value, dict):
        return {**value, "replaced": _strip(tenant, value.get("replaced"))}
    return value
