"""Raft's wire records, and the checks a message from the network passes before the core sees it.

Role: the vocabulary of protocols/raft/: log entries (``Entry``), the snapshot's metadata, a
membership change (``ConfChange``) and the nine messages peers exchange (``MESSAGE_TYPES``).

Rules of this module:

* Every record is a wire record (``protocols.wire``) under a stable ``raft.*`` tag; every
  message has ``src``, ``dst`` and ``term`` fields, so the RaftActor sends them as they are.
* ``invalid_reason`` looks at a message's shape only (types, ranges, that it is for us); it
  never raises and needs no state but the receiver's id. What the message means is the core's.
"""

from __future__ import annotations

from typing import Any

from protocols.wire import is_record, record

ENTRY_NORMAL = 0
ENTRY_CONF_CHANGE = 1
ENTRY_NOOP = 2
ENTRY_KINDS = (ENTRY_NORMAL, ENTRY_CONF_CHANGE, ENTRY_NOOP)


@record("raft.entry")
class Entry:
    term: int
    index: int
    kind: int
    data: bytes


@record("raft.snapshot_meta")
class SnapshotMeta:
    index: int
    term: int
    voters: list[str]
    learners: list[str]


@record("raft.conf_change")
class ConfChange:
    """A single-server membership change; ``op`` is add_learner, promote, remove (or add_voter,
    used only by the bootstrap entries of a fresh cluster)."""

    op: str
    node_id: str

    @staticmethod
    def add_learner(node_id: str) -> "ConfChange":
        return ConfChange("add_learner", node_id)

    @staticmethod
    def promote(node_id: str) -> "ConfChange":
        return ConfChange("promote", node_id)

    @staticmethod
    def remove(node_id: str) -> "ConfChange":
        return ConfChange("remove", node_id)


CONF_OPS = ("add_learner", "promote", "remove", "add_voter")


@record("raft.append")
class AppendEntries:
    src: str
    dst: str
    term: int
    prev_index: int
    prev_term: int
    entries: list[Entry]
    commit: int


@record("raft.append_resp")
class AppendResponse:
    """``index``: the follower's last matching index on success, the rejected ``prev_index`` on
    reject. On reject, ``hint_index``/``hint_term`` name the follower's last entry that could match
    (etcd's fast back-off: the leader skips a whole conflicting term per round trip)."""

    src: str
    dst: str
    term: int
    index: int
    reject: bool
    hint_index: int
    hint_term: int


@record("raft.vote")
class RequestVote:
    """``pre_vote``: a trial election that changes no state (thesis 9.6). ``transfer``: sent on a
    leader's TimeoutNow, so voters must not ignore it for having a leader."""

    src: str
    dst: str
    term: int
    last_index: int
    last_term: int
    pre_vote: bool
    transfer: bool


@record("raft.vote_resp")
class VoteResponse:
    src: str
    dst: str
    term: int
    granted: bool
    pre_vote: bool


@record("raft.snapshot_chunk")
class InstallSnapshot:
    """One chunk of the leader's snapshot (the Raft paper's InstallSnapshot with offset and done):
    ``data`` is the bytes from ``offset`` of a snapshot ``total`` bytes long, ``done`` on the
    last chunk (exactly when ``offset + len(data) == total``). The chunks of one transfer share
    ``src``, ``term``, ``meta`` and ``total`` (``snapshots.py``)."""

    src: str
    dst: str
    term: int
    meta: SnapshotMeta
    offset: int
    total: int
    data: bytes
    done: bool


@record("raft.snapshot_chunk_resp")
class SnapshotResponse:
    """A follower's answer to a chunk that did not complete the snapshot at (``index``,
    ``snap_term``): it holds the first ``offset`` bytes of it. ``reject``: the chunk did not start
    there (or began a transfer it does not hold), so the leader sends from ``offset``. A chunk
    that completes it is answered, once installed, as an append is (``AppendResponse``)."""

    src: str
    dst: str
    term: int
    index: int
    snap_term: int
    offset: int
    reject: bool


@record("raft.heartbeat")
class Heartbeat:
    """``commit`` is min(leader commit, follower match), so a follower never commits an entry it
    may not have; ``context`` carries the newest pending ReadIndex request."""

    src: str
    dst: str
    term: int
    commit: int
    context: bytes


@record("raft.heartbeat_resp")
class HeartbeatResponse:
    src: str
    dst: str
    term: int
    context: bytes


@record("raft.timeout_now")
class TimeoutNow:
    src: str
    dst: str
    term: int


MESSAGE_TYPES = (
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    InstallSnapshot,
    SnapshotResponse,
    Heartbeat,
    HeartbeatResponse,
    TimeoutNow,
)


def is_count(value: Any) -> bool:
    """A non-negative int (not a bool): an index, a term, a commit point."""
    return type(value) is int and value >= 0


def invalid_reason(m: Any, node_id: str) -> str | None:
    """Why ``m`` cannot be a Raft message for ``node_id`` (a counter name), or None if it can."""
    kind = type(m)
    if kind not in MESSAGE_TYPES:
        return "unknown_type"
    if type(m.src) is not str or type(m.dst) is not str or not is_count(m.term):
        return "bad_header"
    if m.dst != node_id:
        return "not_for_me"
    if m.src == node_id:
        return "from_self"
    if kind is AppendEntries:
        if not (is_count(m.prev_index) and is_count(m.prev_term) and is_count(m.commit)
                and type(m.entries) is list):
            return "bad_append"
        index, term = m.prev_index, m.prev_term
        for entry in m.entries:
            if (type(entry) is not Entry or entry.index != index + 1 or type(entry.term) is not int
                    or not term <= entry.term <= m.term or entry.kind not in ENTRY_KINDS
                    or type(entry.data) is not bytes):
                return "bad_append"
            index, term = entry.index, entry.term
    elif kind is AppendResponse:
        if not (is_count(m.index) and type(m.reject) is bool and is_count(m.hint_index)
                and is_count(m.hint_term)):
            return "bad_append_response"
    elif kind is RequestVote:
        if not (is_count(m.last_index) and is_count(m.last_term) and type(m.pre_vote) is bool
                and type(m.transfer) is bool):
            return "bad_vote"
    elif kind is VoteResponse:
        if type(m.granted) is not bool or type(m.pre_vote) is not bool:
            return "bad_vote_response"
    elif kind is InstallSnapshot:
        meta = m.meta
        if (type(meta) is not SnapshotMeta or not is_count(meta.index) or not is_count(meta.term)
                or meta.term > m.term or type(m.data) is not bytes
                or type(meta.voters) is not list or type(meta.learners) is not list
                or not all(type(n) is str for n in meta.voters + meta.learners)):
            return "bad_snapshot"
        if (not is_count(m.offset) or not is_count(m.total) or type(m.done) is not bool
                or m.offset + len(m.data) > m.total or m.done != (m.offset + len(m.data) == m.total)):
            return "bad_snapshot_chunk"  # data beyond the declared size, or done not at its end
    elif kind is SnapshotResponse:
        if not (is_count(m.index) and is_count(m.snap_term) and is_count(m.offset) and type(m.reject) is bool):
            return "bad_snapshot_response"
    elif kind is Heartbeat:
        if not is_count(m.commit) or type(m.context) is not bytes:
            return "bad_heartbeat"
    elif kind is HeartbeatResponse:
        if type(m.context) is not bytes:
            return "bad_heartbeat_response"
    return None


def numbers_in_range(record: Any, limit: int) -> bool:
    """Every integer of a Raft message, of its entries and of its snapshot meta is in [0, limit)."""
    for name in type(record).__slots__:
        value = getattr(record, name)
        kind = type(value)
        if kind is int:
            if not 0 <= value < limit:
                return False
        elif kind is list:  # entries: their term and index are all a follower stores of them
            for item in value:
                if type(item) is Entry:
                    if not (0 <= item.term < limit and 0 <= item.index < limit):
                        return False
                elif is_record(item) and not numbers_in_range(item, limit):
                    return False
        elif is_record(value) and not numbers_in_range(value, limit):
            return False
    return True
