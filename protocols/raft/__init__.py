"""Raft consensus as a pure state machine, in the shape of etcd-io/raft.

Role: the consensus core of the control plane. The RaftActor (``actors/raft.py``) feeds a
``RaftCore`` ticks, peers' messages and proposals, and does what each ``Ready`` says (persist,
send, apply); nothing in this package does I/O.

The modules, bottom up (each imports only those above it):

* ``messages``: the wire records (``Entry``, ``SnapshotMeta``, ``ConfChange``, the nine
  messages in ``MESSAGE_TYPES``), ``invalid_reason``, the shape check every message from the
  network passes before the core sees it, and ``numbers_in_range``, the caller's check that
  what it must store fits its storage.
* ``log``: ``RaftLog``, the entries after the snapshot with their durable, committed and applied
  marks; ``Snapshot``.
* ``progress``: the leader's ``Progress`` per follower (probe, replicate, snapshot) and the
  majority arithmetic (votes, commit index, recent activity).
* ``membership``: the voters and learners, changed one server at a time, with the history to
  undo an overwritten change; ``ConfChangeRejected``.
* ``reads``: ReadIndex, linearizable reads confirmed by a heartbeat quorum; ``ReadState``.
* ``ready``: what the core hands its caller, ``Ready`` (with its ``SoftState`` and
  ``must_sync``) and ``HardState``, the roles, and the Ready obligations.
* ``election``, ``replication`` and ``snapshots``: the mixins of ``RaftCore`` that campaign and
  vote (pre-vote included), that move entries to followers, and that send a snapshot to a
  follower in chunks (stop and wait, resent on a timeout, assembled in memory, bounded).
* ``core``: ``RaftCore`` (tick, step, propose, propose_conf_change, read_index,
  transfer_leadership, forget_leader, campaign, compact, has_ready, ready, advance),
  ``RaftConfig``, ``NotLeader``.

Limitations, on purpose: a snapshot is assembled in memory on the follower (at most
``RaftConfig.max_snapshot_bytes``; the leader holds its own in memory too); pending ReadIndex
requests are dropped when leadership is lost (the caller's deadline retries them); followers do
not forward proposals or reads (``NotLeader.leader_hint`` says where to go).
Client sessions (exactly-once commands) are replicated state, not Raft: ``protocols/sessions.py``.
"""

from protocols.raft.core import NotLeader, RaftConfig, RaftCore
from protocols.raft.election import campaign_rank
from protocols.raft.log import RaftLog, Snapshot
from protocols.raft.membership import ConfChangeRejected
from protocols.raft.messages import (
    ENTRY_CONF_CHANGE,
    ENTRY_NOOP,
    ENTRY_NORMAL,
    MESSAGE_TYPES,
    AppendEntries,
    AppendResponse,
    ConfChange,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RequestVote,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
    numbers_in_range,
)
from protocols.raft.reads import ReadState
from protocols.raft.ready import CANDIDATE, FOLLOWER, LEADER, LEARNER, PRE_CANDIDATE, HardState, Ready, SoftState

__all__ = [
    "CANDIDATE", "FOLLOWER", "LEADER", "LEARNER", "PRE_CANDIDATE",
    "ENTRY_CONF_CHANGE", "ENTRY_NOOP", "ENTRY_NORMAL", "MESSAGE_TYPES",
    "AppendEntries", "AppendResponse", "ConfChange", "ConfChangeRejected", "Entry", "HardState",
    "Heartbeat", "HeartbeatResponse", "InstallSnapshot", "NotLeader", "RaftConfig", "RaftCore",
    "RaftLog", "ReadState", "Ready", "RequestVote", "SnapshotMeta", "Snapshot", "SnapshotResponse", "SoftState",
    "TimeoutNow", "VoteResponse", "campaign_rank", "numbers_in_range",
]
