"""What the dispatch state takes and gives: its events (in) and its instructions (out).

Role: the vocabulary between the SchedulerActor and ``protocols.dispatch.DispatchState``. The
actor makes an event of every message, tick and commit outcome; it carries out every
instruction (I/O). ``reply`` fields are opaque handles of the actor's (a deferred answer): the
state only hands them back in ``Answer`` or ``Propose.answers``. Plain classes: they never
leave the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocols.registry import WorkerInfo
from protocols.rounds import QueueRequest, RegistryRequest
from protocols.tasks import WorkerHeartbeat

# --------------------------------------------------------------------------- events


@dataclass(slots=True)
class LeadershipChanged:
    is_leader: bool
    control: Any  # the replicated ControlState: ``workflows`` and ``sessions`` are read
    now_ms: int
    term: int = 0  # the Raft term this master leads in (its dispatches carry it)


@dataclass(slots=True)
class Applied:
    items: list  # (index, command, result), in log order
    now_ms: int


@dataclass(slots=True)
class Hello:
    info: WorkerInfo
    reply: Any
    now_ms: int


@dataclass(slots=True)
class Heartbeat:
    heartbeat: WorkerHeartbeat
    reply: Any
    now_ms: int


@dataclass(slots=True)
class Reports:
    worker_id: str
    reports: list  # TaskFinished
    reply: Any
    now_ms: int


@dataclass(slots=True)
class Goodbye:
    worker_id: str
    now_ms: int


@dataclass(slots=True)
class Tick:
    now_ms: int


@dataclass(slots=True)
class ClientRequest:
    """A client's command in its session: ``kind`` is ``"submit"`` (``body``: the workflow,
    still to be checked), ``"cancel"`` (the workflow id) or ``"reprioritize"`` (the workflow
    id, the task id and the new priority)."""

    kind: str
    client_id: str
    seq: int
    body: Any
    reply: Any
    now_ms: int


@dataclass(slots=True)
class Committed:
    """The client command ``(client_id, seq)`` committed with ``outcome``, or failed (``error``:
    (kind, message))."""

    client_id: str
    seq: int
    outcome: Any = None
    error: tuple | None = None


@dataclass(slots=True)
class WorkersQuery:
    reply: Any


@dataclass(slots=True)
class QueueQuery:
    reply: Any
    now_ms: int


@dataclass(slots=True)
class RunningCaps:
    """Each capped tenant's ``running_tasks`` quota (protocols/tenant_caps.py): told when the
    quotas load and each time they reload (SIGHUP), whole."""

    caps: dict  # tenant -> how many of its tasks may run at once


# --------------------------------------------------------------------------- instructions


@dataclass(slots=True)
class Propose:
    """Commit ``commands`` as one Batch entry; once committed, answer each ``(reply, value)``."""

    commands: list
    answers: list = field(default_factory=list)


@dataclass(slots=True)
class ProposeClient:
    """Commit a client's command in its session; tell ``Committed`` back when it did (or not)."""

    client_id: str
    seq: int
    body: Any


@dataclass(slots=True)
class Assign:
    worker_id: str
    address: str
    tasks: list  # TaskAssignment


@dataclass(slots=True)
class Cancel:
    worker_id: str
    address: str
    tasks: list  # attempt keys


@dataclass(slots=True)
class Answer:
    reply: Any
    value: Any = None
    error: tuple | None = None  # (kind, message): fail the ask instead


@dataclass(slots=True)
class ToQueue:
    request: QueueRequest


@dataclass(slots=True)
class ToRegistry:
    request: RegistryRequest
