"""What the Raft core hands its caller: a ``Ready``, with the hard state to persist and the
soft state to react to (etcd's Ready, HardState and SoftState).

The Ready obligations, in order (the caller's side of the protocol)::

    while core.has_ready():
        ready = core.ready()
        0. ready.soft_state (if not None) is the new (term, role, leader): react to a leadership
           change after this Ready is done
        1. persist ready.snapshot (if any): it replaces the whole log and the state machine
        2. persist ready.hard_state (if not None) and ready.entries; entries may overwrite a
           conflicting suffix: delete every stored entry with index >= ready.entries[0].index first.
           ready.must_sync says whether this must reach the disk before step 3; when it is False
           only the commit index changed, which may be written later with the next entries
        3. only then send ready.messages (each has .dst): a vote or an acknowledgement must never
           leave the node before what it promises is durable
        4. apply ready.committed_entries in order; answer ready.read_states once applied >= index
        core.advance(ready)

``step()`` and ``tick()`` may be called between ``ready()`` and ``advance()``; ``ready()`` may not
be called again before ``advance()``. ``RaftCore.compact(index, data)`` is the application's own
snapshot: the caller persists that snapshot itself and may then delete stored entries up to
``index``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols.raft.log import Snapshot
from protocols.raft.messages import Entry
from protocols.raft.reads import ReadState

# A server's roles (SoftState.role).
LEADER = "leader"
FOLLOWER = "follower"
CANDIDATE = "candidate"
PRE_CANDIDATE = "pre_candidate"
LEARNER = "learner"


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int
    vote: str | None
    commit: int


@dataclass(frozen=True, slots=True)
class SoftState:
    """What a Ready reports when any of it changed: the term, this node's role, the leader it
    knows. Not persisted (etcd's SoftState, plus the term)."""

    term: int
    role: str
    leader_id: str | None


@dataclass(slots=True)
class Ready:
    """What the caller must do, in this order; see the module docstring for the obligations."""

    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    messages: list[Any]
    committed_entries: list[Entry]
    read_states: list[ReadState]
    soft_state: SoftState | None = None
    must_sync: bool = False
