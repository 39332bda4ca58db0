"""Raft consensus as a pure state machine, in the style of etcd-io/raft.

Role: the consensus core of the control plane. ``RaftCore`` takes *events* (``tick()``, ``step(message)``,
``propose(data)``, ...) and hands back, in a ``Ready``, what the caller must persist, send and apply.
It does no I/O: the RaftActor in ``actors/`` owns the sockets, the SQLite storage and the timer.

Rules of this module:

* Pure: no clocks, threads, sockets or global randomness. Time is the number of ``tick()`` calls;
  randomness is the ``random.Random`` passed to the constructor, so a seed replays a run exactly.
* Every Raft message is a wire record (``protocols.wire``) with ``src``, ``dst`` and ``term``
  fields, so the actor sends them as they are.
* ``step()`` never raises: a stale, malformed or hostile message is ignored and counted in
  ``RaftCore.stats``.
* Deterministic: peers are always visited in sorted order.

The Ready obligations, in order (the caller's side of the protocol)::

    while core.has_ready():
        ready = core.ready()
        1. persist ready.snapshot (if any): it replaces the whole log and the state machine
        2. persist ready.hard_state (if not None) and ready.entries; entries may overwrite a
           conflicting suffix: delete every stored entry with index >= ready.entries[0].index first
        3. only then send ready.messages (each has .dst): a vote or an acknowledgement must never
           leave the node before what it promises is durable
        4. apply ready.committed_entries in order; answer ready.read_states once applied >= index
        core.advance(ready)

``step()`` and ``tick()`` may be called between ``ready()`` and ``advance()``; ``ready()`` may not
be called again before ``advance()``. ``compact(index, data)`` is the application's own snapshot:
the caller persists that snapshot itself and may then delete stored entries up to ``index``.

The public surface: ``RaftCore`` (``tick``, ``step``, ``propose``, ``propose_conf_change``,
``read_index``, ``transfer_leadership``, ``has_ready``, ``ready``, ``advance``, ``compact`` and
read-only properties), the records (``Entry``, ``SnapshotMeta``, ``ConfChange`` and the messages
in ``MESSAGE_TYPES``), ``HardState``, ``Snapshot``, ``Ready``, ``ReadState``, ``RaftConfig``,
``NotLeader``, ``ConfChangeRejected`` and ``ClientSessions``.

Limitations, on purpose: a snapshot travels as one message (the frame cap bounds it); pending
ReadIndex requests are dropped when leadership is lost (the caller's deadline retries them);
followers do not forward proposals or reads (``NotLeader.leader_hint`` says where to go).

Membership is changed one server at a time (Raft thesis, section 4.1): a configuration takes
effect on every node as soon as its entry is appended to the log (not when it commits), and the
next change is accepted only after the previous one committed. A new server joins as a learner,
receives the log, and is then promoted by a second change. A fresh cluster writes its initial
voters into the log as ``add_voter`` entries at term 1 (as etcd's bootstrap does), so a server that
joins later with an empty log replays the whole membership history from index 1.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from protocols.wire import DecodeError, decode, encode, record

if TYPE_CHECKING:  # only the type: randomness is always passed in
    import random

log = logging.getLogger("agentflow.raft")

ENTRY_NORMAL = 0
ENTRY_CONF_CHANGE = 1
ENTRY_NOOP = 2
_ENTRY_KINDS = (ENTRY_NORMAL, ENTRY_CONF_CHANGE, ENTRY_NOOP)

LEADER = "leader"
FOLLOWER = "follower"
CANDIDATE = "candidate"
PRE_CANDIDATE = "pre_candidate"
LEARNER = "learner"

# Replication states of a follower as seen by the leader (etcd's tracker.StateType).
PROBE = "probe"  # one append at a time until the follower's match index is known
REPLICATE = "replicate"  # optimistic pipelining: next_index runs ahead of acknowledgements
SNAPSHOT = "snapshot"  # an InstallSnapshot is outstanding; no appends until it is acknowledged


# --------------------------------------------------------------------------- records


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


@record("raft.snapshot")
class InstallSnapshot:
    src: str
    dst: str
    term: int
    meta: SnapshotMeta
    data: bytes


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
    Heartbeat,
    HeartbeatResponse,
    TimeoutNow,
)


# --------------------------------------------------------------------------- plain values


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int
    vote: str | None
    commit: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: reading the state machine once applied >= index is linearizable."""

    index: int
    request_ctx: bytes


@dataclass(slots=True)
class RaftConfig:
    """Timing in ticks: with a 100 ms tick the defaults are a 100 ms heartbeat and a 1-2 s
    randomized election timeout; the seed's 1 s heartbeat / 5-10 s election is
    ``RaftConfig(heartbeat_ticks=10, election_ticks_min=50, election_ticks_max=100)``."""

    election_ticks_min: int = 10
    election_ticks_max: int = 20
    heartbeat_ticks: int = 1
    max_entries_per_append: int = 512
    max_inflight_appends: int = 64
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_ticks < self.election_ticks_min <= self.election_ticks_max:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks_min <= election_ticks_max")
        if self.max_entries_per_append < 1 or self.max_inflight_appends < 1:
            raise ValueError("max_entries_per_append and max_inflight_appends must be >= 1")


@dataclass(slots=True)
class Ready:
    """What the caller must do, in this order; see the module docstring."""

    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    messages: list[Any]
    committed_entries: list[Entry]
    read_states: list[ReadState]


class NotLeader(Exception):
    """Raised by leader-only calls on a non-leader; ``leader_hint`` is who to ask instead."""

    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class ConfChangeRejected(ValueError):
    """A membership change that is invalid now (another one pending, unknown node, ...)."""


# --------------------------------------------------------------------------- progress


class Progress:
    """The leader's view of one follower (etcd's tracker.Progress)."""

    __slots__ = ("match", "next", "state", "paused", "inflight", "pending_snapshot",
                 "recent_active", "snapshot_elapsed")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.paused = False  # probe: an append is outstanding
        self.inflight: deque[int] = deque()  # replicate: last index of each unacknowledged append
        self.pending_snapshot = 0
        self.recent_active = True
        self.snapshot_elapsed = 0

    def become_probe(self) -> None:
        if self.state == SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = PROBE
        self.paused = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_snapshot(self, index: int) -> None:
        self.state = SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_elapsed = 0
        self.inflight.clear()

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index``; False if it tells nothing new."""
        updated = index > self.match
        if updated:
            self.match = index
            self.paused = False
        if index + 1 > self.next:
            self.next = index + 1
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the append whose prev_index was ``rejected``; False if it is stale."""
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.state == SNAPSHOT or self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.paused = False
        return True

    def free_inflight_to(self, index: int) -> None:
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()


class _PendingRead:
    __slots__ = ("index", "ctx", "acks")

    def __init__(self, index: int, ctx: bytes, acks: set[str]) -> None:
        self.index = index
        self.ctx = ctx
        self.acks = acks


def apply_conf_change(voters: list[str], learners: list[str], change: ConfChange
                      ) -> tuple[list[str], list[str]]:
    """The configuration after ``change``; an inapplicable change leaves it as it is (entries
    are validated when proposed, so this only happens with a hostile log)."""
    voters, learners = list(voters), list(learners)
    node = change.node_id
    if change.op == "add_learner" and node not in voters and node not in learners:
        learners.append(node)
    elif change.op == "add_voter" and node not in voters:
        if node in learners:
            learners.remove(node)
        voters.append(node)
    elif change.op == "promote" and node in learners:
        learners.remove(node)
        voters.append(node)
    elif change.op == "remove":
        if node in voters:
            voters.remove(node)
        if node in learners:
            learners.remove(node)
    return sorted(voters), sorted(learners)


def decode_conf_change(data: bytes) -> ConfChange | None:
    try:
        change = decode(data)
    except DecodeError:
        return None
    if not isinstance(change, ConfChange) or change.op not in CONF_OPS:
        return None
    return change


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


# --------------------------------------------------------------------------- the core


class RaftCore:
    """One Raft server. See the module docstring for the Ready protocol."""

    def __init__(
        self,
        node_id: str,
        voters: list[str],
        config: RaftConfig,
        rng: random.Random,
        hard_state: HardState | None = None,
        entries: list[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Start fresh (no persisted state: ``voters`` bootstraps a new cluster; an empty
        ``voters`` is a server waiting to be added) or restore from what was persisted (then
        ``voters`` is ignored: the configuration comes from the snapshot and the log)."""
        self._id = node_id
        self.config = config
        self._rng = rng
        self.stats: dict[str, int] = {}

        # The log: _entries[k] has index _snap_index + 1 + k; (_snap_index, _snap_term) is the last
        # entry covered by the snapshot (0, 0 for an uncompacted log).
        self._snapshot: Snapshot | None = None
        self._snap_index = 0
        self._snap_term = 0
        self._entries: list[Entry] = []
        self._unstable_from = 1  # first index not yet handed out in a Ready to be persisted
        self._snapshot_to_persist: Snapshot | None = None

        # Configuration: the one at the snapshot plus one per conf-change entry in the log, so a
        # truncated conf-change entry can be undone.
        self._conf_base: tuple[list[str], list[str]] = ([], [])
        self._conf_log: list[tuple[int, list[str], list[str]]] = []
        self._voters: list[str] = []
        self._learners: list[str] = []

        self._term = 0
        self._vote: str | None = None
        self._commit = 0
        self._applied = 0
        self._persisted_hard_state = HardState(0, None, 0)

        self._role = FOLLOWER
        self._leader_id: str | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_ticks = 0
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, Progress] = {}
        self._pending_conf_index = 0
        self._transferee: str | None = None
        self._needs_broadcast = False
        self._pending_reads: list[_PendingRead] = []
        self._reads_awaiting_commit: list[bytes] = []
        self._read_states: list[ReadState] = []
        self._messages: list[Any] = []

        persisted = hard_state is not None or bool(entries) or snapshot is not None
        if persisted:
            self._restore(hard_state, list(entries), snapshot)
        elif voters:
            self._bootstrap(sorted(set(voters)))

        self._become_follower(self._term, None)

    # ------------------------------------------------------------------ start-up

    def _bootstrap(self, voters: list[str]) -> None:
        changes = [ConfChange("add_voter", v) for v in voters]
        entries = [Entry(1, i + 1, ENTRY_CONF_CHANGE, encode(c)) for i, c in enumerate(changes)]
        self._entries = entries
        self._note_appended(entries)
        self._term = 1
        self._commit = len(entries)  # identical on every founding member: committed by fiat

    def _restore(self, hard_state: HardState | None, entries: list[Entry],
                 snapshot: Snapshot | None) -> None:
        if snapshot is not None:
            meta = snapshot.meta
            self._snapshot = snapshot
            self._snap_index, self._snap_term = meta.index, meta.term
            self._conf_base = (sorted(meta.voters), sorted(meta.learners))
        self._voters, self._learners = list(self._conf_base[0]), list(self._conf_base[1])
        self._entries = [e for e in entries if e.index > self._snap_index]
        self._note_appended(self._entries)
        self._unstable_from = self.last_index + 1
        if hard_state is not None:
            self._term, self._vote = hard_state.term, hard_state.vote
            self._commit = min(max(hard_state.commit, self._snap_index), self.last_index)
        else:
            self._commit = self._snap_index
        self._applied = self._snap_index
        self._persisted_hard_state = HardState(self._term, self._vote, self._commit)

    # ------------------------------------------------------------------ read-only properties

    @property
    def node_id(self) -> str:
        return self._id

    @property
    def role(self) -> str:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> str | None:
        return self._vote

    @property
    def leader_id(self) -> str | None:
        return self._leader_id

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def last_index(self) -> int:
        return self._snap_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._snap_term

    @property
    def first_index(self) -> int:
        """The first index still in the log (everything before is in the snapshot)."""
        return self._snap_index + 1

    @property
    def voters(self) -> list[str]:
        return list(self._voters)

    @property
    def learners(self) -> list[str]:
        return list(self._learners)

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def transferee(self) -> str | None:
        return self._transferee

    def progress(self) -> dict[str, dict[str, Any]]:
        """The leader's view of each follower, for status pages; empty on a non-leader."""
        return {peer: {"match": pr.match, "next": pr.next, "state": pr.state}
                for peer, pr in sorted(self._progress.items())}

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``, or None if compacted away or beyond the log."""
        offset = index - self._snap_index
        if offset == 0:
            return self._snap_term
        if 0 < offset <= len(self._entries):
            return self._entries[offset - 1].term
        return None

    def entries_between(self, low: int, high: int) -> list[Entry]:
        """Entries with low <= index <= high that are still in the log."""
        low = max(low, self._snap_index + 1)
        return self._entries[low - self._snap_index - 1: max(0, high - self._snap_index)]

    # ------------------------------------------------------------------ events from the caller

    def tick(self) -> None:
        """One unit of time has passed."""
        if self._role == LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self._promotable() and self._election_elapsed >= self._randomized_election_ticks:
                self._election_elapsed = 0
                self._campaign(pre_vote=self.config.pre_vote, transfer=False)

    def propose(self, data: bytes) -> int:
        """Append a command; returns its index. It is committed once it shows up in
        ``committed_entries`` (at this index, with this term)."""
        if self._role != LEADER or self._transferee is not None:
            raise NotLeader(self._transferee if self._role == LEADER else self._leader_id)
        index = self.last_index + 1
        self._entries.append(Entry(self._term, index, ENTRY_NORMAL, data))
        self._needs_broadcast = True
        return index

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a single-server membership change; one may be pending at a time, and a new
        leader accepts none until an entry of its own term has committed."""
        if self._role != LEADER or self._transferee is not None:
            raise NotLeader(self._transferee if self._role == LEADER else self._leader_id)
        if not isinstance(change, ConfChange) or change.op not in ("add_learner", "promote", "remove"):
            raise ConfChangeRejected(f"not a membership change: {change!r}")
        if self._pending_conf_index > self._commit:
            raise ConfChangeRejected("another membership change is still pending")
        node = change.node_id
        if change.op == "add_learner" and (node in self._voters or node in self._learners):
            raise ConfChangeRejected(f"{node} is already a member")
        if change.op == "promote" and node not in self._learners:
            raise ConfChangeRejected(f"{node} is not a learner")
        if change.op == "remove":
            if node not in self._voters and node not in self._learners:
                raise ConfChangeRejected(f"{node} is not a member")
            if self._voters == [node]:
                raise ConfChangeRejected("cannot remove the last voter")
        index = self.last_index + 1
        entry = Entry(self._term, index, ENTRY_CONF_CHANGE, encode(change))
        self._entries.append(entry)
        self._pending_conf_index = index
        self._note_appended([entry])
        self._needs_broadcast = True
        return index

    def read_index(self, request_ctx: bytes) -> None:
        """Ask for a linearizable read point: a ReadState(index, request_ctx) appears in a later
        Ready once a quorum has confirmed this node is still the leader. Requests are dropped
        if leadership is lost meanwhile (the caller times out and retries)."""
        if self._role != LEADER:
            raise NotLeader(self._leader_id)
        if self.term_at(self._commit) != self._term:
            # The commit index of a new leader may be behind (thesis 6.4): wait for the no-op.
            self._reads_awaiting_commit.append(request_ctx)
            return
        self._add_read(request_ctx)

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to voter ``to`` (thesis 3.10): stop accepting proposals, bring ``to``
        up to date, then tell it to start an election at once. Aborted after an election timeout."""
        if self._role != LEADER:
            raise NotLeader(self._leader_id)
        if to == self._id or to == self._transferee:
            return
        if to not in self._voters or to not in self._progress:
            raise ValueError(f"cannot transfer leadership to {to!r}: not a voter")
        self._transferee = to
        self._election_elapsed = 0  # the transfer gets one full election timeout
        progress = self._progress[to]
        if progress.match == self.last_index:
            self._send(TimeoutNow(self._id, to, self._term))
        else:
            self._send_append(to, progress, send_if_empty=True)

    def compact(self, index: int, data: bytes) -> None:
        """The application took a snapshot (``data``) of its state at applied ``index``: keep it
        for lagging followers and drop the log up to ``index``."""
        if index <= self._snap_index:
            return
        if index > self._applied:
            raise ValueError(f"cannot compact to {index}: only {self._applied} applied")
        voters, learners = self._conf_base
        for conf_index, conf_voters, conf_learners in self._conf_log:
            if conf_index <= index:
                voters, learners = conf_voters, conf_learners
        term = self.term_at(index)
        self._snapshot = Snapshot(SnapshotMeta(index, term, list(voters), list(learners)), data)
        del self._entries[: index - self._snap_index]
        self._snap_index, self._snap_term = index, term
        self._conf_base = (voters, learners)
        self._conf_log = [c for c in self._conf_log if c[0] > index]

    # ------------------------------------------------------------------ the Ready protocol

    def has_ready(self) -> bool:
        self._flush_appends()
        return bool(
            self._messages
            or self._unstable_from <= self.last_index
            or self._snapshot_to_persist is not None
            or self._commit > self._applied
            or self._read_states
            or self._hard_state_changed()
        )

    def ready(self) -> Ready:
        """Take what is to be done; call ``advance(ready)`` when it is done, before the next
        ``ready()``."""
        self._flush_appends()
        hard_state = self._hard_state()
        if hard_state == self._persisted_hard_state:
            hard_state = None
        unstable = self._entries[self._unstable_from - self._snap_index - 1:]
        applied = self._applied
        if self._snapshot_to_persist is not None:
            applied = max(applied, self._snapshot_to_persist.meta.index)
        committed = self.entries_between(applied + 1, self._commit)
        messages, self._messages = self._messages, []
        read_states, self._read_states = self._read_states, []
        return Ready(hard_state, unstable, self._snapshot_to_persist, messages, committed, read_states)

    def advance(self, ready: Ready) -> None:
        """``ready`` has been persisted, sent and applied."""
        if ready.hard_state is not None:
            self._persisted_hard_state = ready.hard_state
        if ready.snapshot is not None:
            if self._snapshot_to_persist is ready.snapshot:
                self._snapshot_to_persist = None
            self._applied = max(self._applied, ready.snapshot.meta.index)
        if ready.entries:
            last = ready.entries[-1]
            # Same term at the same index means the same log up to it (log matching), so
            # everything handed out is still what is in the log: it is stable now.
            if self.term_at(last.index) == last.term:
                self._unstable_from = max(self._unstable_from, last.index + 1)
        if ready.committed_entries:
            self._applied = max(self._applied, ready.committed_entries[-1].index)
        if self._role == LEADER and self._maybe_commit():
            self._on_commit_advanced()

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._commit)

    def _hard_state_changed(self) -> bool:
        persisted = self._persisted_hard_state
        return (persisted.term != self._term or persisted.vote != self._vote
                or persisted.commit != self._commit)

    # ------------------------------------------------------------------ messages from peers

    def step(self, message: Any) -> None:
        """Handle one message from a peer. Never raises: bad input is counted in ``stats``."""
        reason = self._invalid_reason(message)
        if reason is not None:
            self._count("dropped_" + reason)
            return
        try:
            self._step(message)
        except Exception:  # a bug must not take the node down; the counter makes it visible
            self._count("step_error")
            log.exception("[raft] Node %s failed to handle %s", self._id, type(message).__name__)

    def _step(self, m: Any) -> None:
        if m.term > self._term:
            if type(m) is RequestVote:
                in_lease = (self.config.check_quorum and self._leader_id is not None
                            and self._election_elapsed < self.config.election_ticks_min)
                if in_lease and not m.transfer:
                    # We heard from a leader recently: a disruptive server (removed, or back from a
                    # partition) must not depose it (thesis 4.2.3).
                    self._count("vote_ignored_in_lease")
                    return
            if type(m) is RequestVote and m.pre_vote:
                pass  # a pre-vote changes nothing here
            elif type(m) is VoteResponse and m.pre_vote and m.granted:
                pass  # the term is bumped only when the pre-vote wins
            else:
                leader = m.src if type(m) in (AppendEntries, Heartbeat, InstallSnapshot) else None
                self._become_follower(m.term, leader)
        elif m.term < self._term:
            if type(m) in (AppendEntries, Heartbeat):
                # A stale leader: tell it our term so it steps down (without pre-vote it would
                # learn it from our vote requests; with pre-vote there may be none).
                self._send(AppendResponse(self._id, m.src, self._term, 0, False, 0, 0))
            elif type(m) is RequestVote and m.pre_vote:
                self._send(VoteResponse(self._id, m.src, self._term, False, True))
            else:
                self._count("stale_term")
            return

        kind = type(m)
        if kind is RequestVote:
            self._handle_vote_request(m)
        elif kind is VoteResponse:
            self._handle_vote_response(m)
        elif kind in (AppendEntries, Heartbeat, InstallSnapshot):
            if self._role == LEADER:
                self._count("leader_message_from_peer_leader")  # impossible unless hostile
                return
            if self._role in (CANDIDATE, PRE_CANDIDATE) or self._leader_id != m.src:
                self._become_follower(self._term, m.src)
            self._election_elapsed = 0
            if kind is AppendEntries:
                self._handle_append(m)
            elif kind is Heartbeat:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif kind is TimeoutNow:
            # Only our leader may hand leadership over; anyone else would just force an election.
            if self._role != LEADER and self._promotable() and m.src == self._leader_id:
                log.info("[raft] Node %s asked by %s to take over leadership", self._id, m.src)
                self._campaign(pre_vote=False, transfer=True)
            else:
                self._count("timeout_now_ignored")
        elif self._role != LEADER:
            self._count("response_to_non_leader")
        elif m.src not in self._progress:
            self._count("response_from_non_member")
        elif kind is AppendResponse:
            self._handle_append_response(m, self._progress[m.src])
        else:
            self._handle_heartbeat_response(m, self._progress[m.src])

    def _invalid_reason(self, m: Any) -> str | None:
        kind = type(m)
        if kind not in MESSAGE_TYPES:
            return "unknown_type"
        if type(m.src) is not str or type(m.dst) is not str or not _is_count(m.term):
            return "bad_header"
        if m.dst != self._id:
            return "not_for_me"
        if m.src == self._id:
            return "from_self"
        if kind is AppendEntries:
            if not (_is_count(m.prev_index) and _is_count(m.prev_term) and _is_count(m.commit)
                    and type(m.entries) is list):
                return "bad_append"
            index, term = m.prev_index, m.prev_term
            for entry in m.entries:
                if (type(entry) is not Entry or entry.index != index + 1 or type(entry.term) is not int
                        or not term <= entry.term <= m.term or entry.kind not in _ENTRY_KINDS
                        or type(entry.data) is not bytes):
                    return "bad_append"
                index, term = entry.index, entry.term
        elif kind is AppendResponse:
            if not (_is_count(m.index) and type(m.reject) is bool and _is_count(m.hint_index)
                    and _is_count(m.hint_term)):
                return "bad_append_response"
        elif kind is RequestVote:
            if not (_is_count(m.last_index) and _is_count(m.last_term) and type(m.pre_vote) is bool
                    and type(m.transfer) is bool):
                return "bad_vote"
        elif kind is VoteResponse:
            if type(m.granted) is not bool or type(m.pre_vote) is not bool:
                return "bad_vote_response"
        elif kind is InstallSnapshot:
            meta = m.meta
            if (type(meta) is not SnapshotMeta or not _is_count(meta.index) or not _is_count(meta.term)
                    or meta.term > m.term or type(m.data) is not bytes
                    or type(meta.voters) is not list or type(meta.learners) is not list
                    or not all(type(n) is str for n in meta.voters + meta.learners)):
                return "bad_snapshot"
        elif kind is Heartbeat:
            if not _is_count(m.commit) or type(m.context) is not bytes:
                return "bad_heartbeat"
        elif kind is HeartbeatResponse:
            if type(m.context) is not bytes:
                return "bad_heartbeat_response"
        return None

    # ------------------------------------------------------------------ roles

    def _promotable(self) -> bool:
        return self._id in self._voters

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = None
        self._leader_id = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_ticks = self._rng.randint(
            self.config.election_ticks_min, self.config.election_ticks_max)
        self._votes = {}
        self._progress = {}
        self._transferee = None
        self._needs_broadcast = False
        self._pending_reads = []
        self._reads_awaiting_commit = []

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._reset(term)
        self._leader_id = leader
        self._role = LEARNER if self._id in self._learners else FOLLOWER

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            # A pre-candidate keeps its term and vote: a partitioned server must not inflate the
            # term and disrupt the cluster when it comes back.
            self._reset(self._term)
            self._role = PRE_CANDIDATE
            vote_term = self._term + 1
            log.debug("[raft] Node %s starting pre-vote for term %d", self._id, vote_term)
        else:
            self._reset(self._term + 1)
            self._vote = self._id
            self._role = CANDIDATE
            vote_term = self._term
            log.info("[raft] Node %s starting election for term %d", self._id, vote_term)
        self._votes = {self._id: True}
        if self._tally() == "won":
            self._on_election_won()
            return
        last_index, last_term = self.last_index, self.last_term
        for voter in self._voters:
            if voter != self._id:
                self._send(RequestVote(self._id, voter, vote_term, last_index, last_term,
                                       pre_vote, transfer))

    def _quorum(self) -> int:
        return len(self._voters) // 2 + 1

    def _granted_votes(self) -> int:
        return sum(1 for v in self._voters if self._votes.get(v) is True)

    def _tally(self) -> str:
        granted = self._granted_votes()
        rejected = sum(1 for v in self._voters if self._votes.get(v) is False)
        quorum = self._quorum()
        if granted >= quorum:
            return "won"
        if rejected > len(self._voters) - quorum:
            return "lost"
        return "pending"

    def _on_election_won(self) -> None:
        if self._role == PRE_CANDIDATE:
            self._campaign(pre_vote=False, transfer=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        votes = self._granted_votes()
        self._reset(self._term)
        self._role = LEADER
        self._leader_id = self._id
        next_index = self.last_index + 1
        for peer in self._peers():
            self._progress[peer] = Progress(next_index)
        # The no-op commits the entries of earlier terms (they cannot be committed by counting,
        # figure 8) and confirms the commit index for ReadIndex; no conf change before it commits.
        self._entries.append(Entry(self._term, next_index, ENTRY_NOOP, b""))
        self._pending_conf_index = next_index
        log.info("[raft] Node %s became Leader for term %d (votes: %d/%d)",
                 self._id, self._term, votes, len(self._voters))
        self._broadcast_append()

    def _peers(self) -> list[str]:
        return sorted(n for n in set(self._voters) | set(self._learners) if n != self._id)

    # ------------------------------------------------------------------ votes

    def _handle_vote_request(self, m: RequestVote) -> None:
        can_vote = (self._vote == m.src
                    or (self._vote is None and self._leader_id is None)
                    or (m.pre_vote and m.term > self._term))
        up_to_date = (m.last_term > self.last_term
                      or (m.last_term == self.last_term and m.last_index >= self.last_index))
        if can_vote and up_to_date:
            # Answer at the requested term: a granted pre-vote must count for that term.
            self._send(VoteResponse(self._id, m.src, m.term, True, m.pre_vote))
            if not m.pre_vote:
                self._vote = m.src
                self._election_elapsed = 0
        else:
            self._send(VoteResponse(self._id, m.src, self._term, False, m.pre_vote))

    def _handle_vote_response(self, m: VoteResponse) -> None:
        if self._role == PRE_CANDIDATE and m.pre_vote:
            if m.granted and m.term != self._term + 1:
                self._count("stale_vote_response")
                return
        elif self._role == CANDIDATE and not m.pre_vote and m.term == self._term:
            pass
        else:
            self._count("stale_vote_response")
            return
        if m.src in self._voters and m.src not in self._votes:
            self._votes[m.src] = m.granted
        outcome = self._tally()
        if outcome == "won":
            self._on_election_won()
        elif outcome == "lost":
            self._become_follower(self._term, None)

    # ------------------------------------------------------------------ follower side

    def _handle_append(self, m: AppendEntries) -> None:
        if m.prev_index < self._commit:
            # Everything up to our commit index is known to match; say so and let the leader
            # continue from there (it is a duplicate or reordered append).
            self._send(AppendResponse(self._id, m.src, self._term, self._commit, False, 0, 0))
            return
        if self.term_at(m.prev_index) != m.prev_term:
            hint = self._last_index_with_term_at_most(min(m.prev_index, self.last_index), m.prev_term)
            self._send(AppendResponse(self._id, m.src, self._term, m.prev_index, True, hint,
                                      self.term_at(hint) or 0))
            return
        last_new = m.prev_index + len(m.entries)
        if not self._append_from_leader(m.entries):
            return
        if m.commit > self._commit:
            self._commit_to(min(m.commit, last_new))
        self._send(AppendResponse(self._id, m.src, self._term, last_new, False, 0, 0))

    def _append_from_leader(self, entries: list[Entry]) -> bool:
        """Append ``entries`` (which follow a matching entry), truncating a conflicting suffix."""
        last_index = self.last_index
        start = 0
        for entry in entries:
            if entry.index > last_index or self.term_at(entry.index) != entry.term:
                break
            start += 1
        if start == len(entries):
            return True  # all present already
        first = entries[start].index
        if first <= self._commit:
            self._count("conflict_below_commit")  # only a hostile or buggy leader does this
            return False
        if first <= last_index:
            del self._entries[first - self._snap_index - 1:]
            self._unstable_from = min(self._unstable_from, first)
            self._undo_conf_from(first)
        new_entries = entries[start:]
        self._entries.extend(new_entries)
        self._note_appended(new_entries)
        return True

    def _last_index_with_term_at_most(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose entry's term is <= ``term`` (terms only grow
        along the log, so a bisection finds it)."""
        index = min(index, self.last_index)
        if index <= self._snap_index:
            return index
        position = bisect_right(self._entries, term, hi=index - self._snap_index,
                                key=lambda entry: entry.term)
        return self._snap_index + position

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        if m.commit > self._commit:
            self._commit_to(min(m.commit, self.last_index))
        self._send(HeartbeatResponse(self._id, m.src, self._term, m.context))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.meta
        if meta.index <= self._commit:
            self._send(AppendResponse(self._id, m.src, self._term, self._commit, False, 0, 0))
            return
        if self.term_at(meta.index) == meta.term:
            # We already have the log up to the snapshot: no need to replace the state.
            self._commit_to(meta.index)
            self._send(AppendResponse(self._id, m.src, self._term, meta.index, False, 0, 0))
            return
        log.info("[raft] Node %s installing snapshot at index %d term %d from %s",
                 self._id, meta.index, meta.term, m.src)
        snapshot = Snapshot(meta, m.data)
        self._snapshot = snapshot
        self._snapshot_to_persist = snapshot
        self._entries = []
        self._snap_index, self._snap_term = meta.index, meta.term
        self._unstable_from = meta.index + 1
        self._commit = meta.index
        self._conf_base = (sorted(meta.voters), sorted(meta.learners))
        self._conf_log = []
        self._set_config(*self._conf_base)
        self._send(AppendResponse(self._id, m.src, self._term, meta.index, False, 0, 0))

    def _commit_to(self, index: int) -> None:
        if index > self._commit:
            self._commit = index

    # ------------------------------------------------------------------ leader side

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_ticks_min:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_recently_active():
                log.info("[raft] Node %s stepping down: no quorum heard from in term %d",
                         self._id, self._term)
                self._become_follower(self._term, None)
                return
            if self._transferee is not None:
                log.info("[raft] Node %s aborting leadership transfer to %s", self._id,
                         self._transferee)
                self._transferee = None
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_recently_active(self) -> bool:
        active = 0
        for voter in self._voters:
            if voter == self._id:
                active += 1
            else:
                progress = self._progress.get(voter)
                if progress is not None and progress.recent_active:
                    active += 1
        for progress in self._progress.values():
            progress.recent_active = False
        return active >= self._quorum()

    def _broadcast_heartbeat(self) -> None:
        context = self._pending_reads[-1].ctx if self._pending_reads else b""
        for peer in self._peers():
            progress = self._progress[peer]
            self._send(Heartbeat(self._id, peer, self._term, min(progress.match, self._commit), context))

    def _broadcast_append(self) -> None:
        for peer in self._peers():
            self._send_appends(peer, self._progress[peer], send_if_empty=True)
        self._needs_broadcast = False

    def _flush_appends(self) -> None:
        """Send what proposals added since the last Ready, batched per Ready: a burst of
        proposals costs one round of messages, not one per proposal.

        A new commit index is not sent on its own: followers learn it from the next append or
        heartbeat (as hashicorp/raft does). Nothing waits on a follower's commit index, and an
        append per commit would cost every follower a wake-up, and the leader an answer, on the
        path of the next command."""
        if self._needs_broadcast and self._role == LEADER:
            for peer in self._peers():
                progress = self._progress[peer]
                # A peer in probe with nothing in flight (one just added) is probed at once.
                self._send_appends(peer, progress, send_if_empty=progress.state == PROBE)
        self._needs_broadcast = False

    def _send_appends(self, peer: str, progress: Progress, send_if_empty: bool) -> bool:
        """Send as many appends as the follower's state allows (pipelining when replicating);
        False if nothing was sent."""
        if not self._send_append(peer, progress, send_if_empty):
            return False
        while (progress.state == REPLICATE and progress.next <= self.last_index
               and self._send_append(peer, progress, send_if_empty=False)):
            pass
        return True

    def _send_append(self, peer: str, progress: Progress, send_if_empty: bool) -> bool:
        """Send one append (or the snapshot) to ``peer``; False if nothing was sent."""
        if progress.state == SNAPSHOT or (progress.state == PROBE and progress.paused):
            return False
        if progress.state == REPLICATE and len(progress.inflight) >= self.config.max_inflight_appends:
            return False
        prev_index = progress.next - 1
        prev_term = self.term_at(prev_index)
        if prev_term is None:
            return self._send_snapshot(peer, progress)
        last_index = self.last_index
        if progress.next > last_index and not send_if_empty:
            return False
        high = min(last_index, prev_index + self.config.max_entries_per_append)
        entries = self._entries[prev_index - self._snap_index: high - self._snap_index]
        self._send(AppendEntries(self._id, peer, self._term, prev_index, prev_term, entries,
                                 self._commit))
        if progress.state == REPLICATE:
            if entries:
                progress.next = high + 1
                progress.inflight.append(high)
        else:
            progress.paused = True
        return True

    def _send_snapshot(self, peer: str, progress: Progress) -> bool:
        if not progress.recent_active or self._snapshot is None:
            return False  # don't ship a snapshot to a peer that is probably down
        snapshot = self._snapshot
        progress.become_snapshot(snapshot.meta.index)
        self._send(InstallSnapshot(self._id, peer, self._term, snapshot.meta, snapshot.data))
        return True

    def _handle_append_response(self, m: AppendResponse, progress: Progress) -> None:
        progress.recent_active = True
        if m.index > self.last_index:
            self._count("ack_beyond_log")  # hostile: would make us commit what we don't have
            return
        if m.reject:
            match_hint = m.hint_index
            if m.hint_term > 0:
                match_hint = self._last_index_with_term_at_most(m.hint_index, m.hint_term)
            if progress.maybe_decrease_to(m.index, match_hint):
                if progress.state == REPLICATE:
                    progress.become_probe()
                self._send_appends(m.src, progress, send_if_empty=False)
            return
        was_paused = progress.state == PROBE and progress.paused
        if not progress.maybe_update(m.index) and not (
                progress.state == PROBE and progress.match == m.index):
            if progress.state == REPLICATE:
                progress.free_inflight_to(m.index)
            return
        if progress.state == PROBE:
            progress.become_replicate()
        elif progress.state == SNAPSHOT and progress.match >= progress.pending_snapshot:
            progress.become_replicate()
        elif progress.state == REPLICATE:
            progress.free_inflight_to(m.index)
        if self._maybe_commit():
            self._on_commit_advanced()
            if self._role != LEADER:
                return
        self._send_appends(m.src, progress, send_if_empty=was_paused)
        if m.src == self._transferee and progress.match == self.last_index:
            log.info("[raft] Node %s transferring leadership to %s", self._id, m.src)
            self._send(TimeoutNow(self._id, m.src, self._term))

    def _handle_heartbeat_response(self, m: HeartbeatResponse, progress: Progress) -> None:
        progress.recent_active = True
        progress.paused = False
        if progress.state == SNAPSHOT:
            progress.snapshot_elapsed += self.config.heartbeat_ticks
            if progress.snapshot_elapsed >= self.config.election_ticks_min:
                progress.become_probe()  # the snapshot was probably lost: send it again
        if (progress.state == REPLICATE and progress.match < self.last_index
                and len(progress.inflight) >= self.config.max_inflight_appends):
            progress.inflight.popleft()  # an append was probably lost: let one more through
        if progress.match < self.last_index:
            # An empty append at next_index also uncovers a lost append: the follower rejects it.
            self._send_appends(m.src, progress, send_if_empty=True)
        if m.context and m.src in self._voters:
            self._ack_read(m.context, m.src)

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a quorum of voters has durably stored, but only to
        an entry of the current term (counting replicas is unsafe for older terms, figure 8)."""
        matches = []
        for voter in self._voters:
            if voter == self._id:
                matches.append(self._unstable_from - 1)  # our own durable log
            else:
                progress = self._progress.get(voter)
                matches.append(progress.match if progress is not None else 0)
        if not matches:
            return False
        matches.sort(reverse=True)
        quorum_index = matches[len(matches) // 2]
        if quorum_index > self._commit and self.term_at(quorum_index) == self._term:
            self._commit = quorum_index
            return True
        return False

    def _on_commit_advanced(self) -> None:
        if self._reads_awaiting_commit and self.term_at(self._commit) == self._term:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for ctx in waiting:
                self._add_read(ctx)
        if (self._id not in self._voters and self._pending_conf_index <= self._commit):
            # Our own removal has committed: the cluster goes on without us (thesis 4.2.2).
            log.info("[raft] Node %s removed from the cluster; stepping down", self._id)
            self._broadcast_append()  # the others must learn that it committed
            self._become_follower(self._term, None)

    # ------------------------------------------------------------------ ReadIndex

    def _add_read(self, ctx: bytes) -> None:
        if self._voters == [self._id]:
            self._read_states.append(ReadState(self._commit, ctx))
            return
        self._pending_reads.append(_PendingRead(self._commit, ctx, {self._id}))
        self._broadcast_heartbeat()

    def _ack_read(self, ctx: bytes, voter: str) -> None:
        for position, pending in enumerate(self._pending_reads):
            if pending.ctx == ctx:
                pending.acks.add(voter)
                acks = sum(1 for v in self._voters if v in pending.acks)
                if acks >= self._quorum():
                    # A quorum confirmed us after every earlier request was registered too.
                    done = self._pending_reads[: position + 1]
                    del self._pending_reads[: position + 1]
                    self._read_states.extend(ReadState(p.index, p.ctx) for p in done)
                return

    # ------------------------------------------------------------------ configuration

    def _note_appended(self, entries: list[Entry]) -> None:
        """Membership changes take effect as soon as their entry is in the log."""
        for entry in entries:
            if entry.kind == ENTRY_CONF_CHANGE:
                change = decode_conf_change(entry.data)
                if change is None:
                    self._count("bad_conf_change_entry")
                    continue
                voters, learners = apply_conf_change(self._voters, self._learners, change)
                self._conf_log.append((entry.index, voters, learners))
                self._set_config(voters, learners)

    def _undo_conf_from(self, index: int) -> None:
        if self._conf_log and self._conf_log[-1][0] >= index:
            while self._conf_log and self._conf_log[-1][0] >= index:
                self._conf_log.pop()
            if self._conf_log:
                self._set_config(self._conf_log[-1][1], self._conf_log[-1][2])
            else:
                self._set_config(*self._conf_base)

    def _set_config(self, voters: list[str], learners: list[str]) -> None:
        self._voters, self._learners = list(voters), list(learners)
        if self._role == LEADER:
            members = set(voters) | set(learners)
            for peer in list(self._progress):
                if peer not in members:
                    del self._progress[peer]
            for peer in self._peers():
                if peer not in self._progress:
                    self._progress[peer] = Progress(self.last_index + 1)
                    self._needs_broadcast = True
            if self._transferee is not None and self._transferee not in voters:
                self._transferee = None
            if self._maybe_commit():
                self._on_commit_advanced()
        elif self._role in (FOLLOWER, LEARNER):
            self._role = LEARNER if self._id in learners else FOLLOWER
        elif self._id not in voters:
            self._become_follower(self._term, None)

    # ------------------------------------------------------------------ plumbing

    def _send(self, message: Any) -> None:
        self._messages.append(message)

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1


# --------------------------------------------------------------------------- client sessions


class ClientSessions:
    """Exactly-once application of client commands (Raft thesis 6.3), as pure replicated state.

    A client numbers its commands 1, 2, 3, ... and retries a command with the same number until
    it gets an answer. Applying (client_id, seq) a second time returns the first result instead of
    running the command again. Each session keeps the results of its last ``results_per_client``
    commands; beyond ``max_sessions`` the session applied least recently (by log index) is
    evicted, so every replica evicts the same ones. Results must be msgpack-native so the
    sessions can go into a snapshot (``to_dict`` / ``from_dict``).
    """

    NEW = "new"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"  # older than what the session still remembers: the caller reports an error

    def __init__(self, max_sessions: int = 10_000, results_per_client: int = 16) -> None:
        self.max_sessions = max_sessions
        self.results_per_client = results_per_client
        # client_id -> [last_applied_index, {seq: result} in ascending seq order];
        # dict order = least recently applied first
        self._sessions: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def check(self, client_id: str, seq: int) -> tuple[str, Any]:
        """(NEW, None), (DUPLICATE, original result) or (EXPIRED, None)."""
        session = self._sessions.get(client_id)
        if session is None:
            return self.NEW, None
        results = session[1]
        if seq in results:
            return self.DUPLICATE, results[seq]
        if results and seq < next(iter(results)):  # the lowest remembered
            return self.EXPIRED, None
        return self.NEW, None

    def record(self, client_id: str, seq: int, result: Any, index: int) -> None:
        """Remember ``result`` of (client_id, seq), applied at log ``index``."""
        session = self._sessions.pop(client_id, None)
        if session is None:
            session = [index, {}]
        session[0] = index
        results = session[1]
        in_order = not results or seq > next(reversed(results))
        results[seq] = result
        if not in_order:  # rare: commands of one session applied out of their order
            results = session[1] = dict(sorted(results.items()))
        while len(results) > self.results_per_client:
            del results[next(iter(results))]
        self._sessions[client_id] = session  # re-inserted: now the most recently applied
        while len(self._sessions) > self.max_sessions:
            del self._sessions[next(iter(self._sessions))]

    def check_and_record(self, client_id: str, seq: int, index: int,
                         apply: Callable[[], Any]) -> tuple[str, Any]:
        """Run ``apply()`` unless (client_id, seq) ran before; returns (status, result) where the
        result is the original one for a duplicate."""
        status, result = self.check(client_id, seq)
        if status != self.NEW:
            return status, result
        result = apply()
        self.record(client_id, seq, result, index)
        return status, result

    def to_dict(self) -> dict[str, Any]:
        return {"max_sessions": self.max_sessions, "results_per_client": self.results_per_client,
                "sessions": [[client, s[0], sorted(s[1].items())] for client, s in self._sessions.items()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClientSessions":
        sessions = cls(data["max_sessions"], data["results_per_client"])
        for client, index, results in data["sessions"]:
            sessions._sessions[client] = [index, {seq: result for seq, result in sorted(results, key=lambda r: r[0])}]
        return sessions
