"""The Raft core: one server's consensus state machine, driven by events (etcd's raft and RawNode).

Role: ``RaftCore`` takes *events* (``tick()``, ``step(message)``, ``propose(data)``, ...) and hands
back, in a ``Ready``, what the caller must persist, send and apply. It does no I/O: the RaftActor
in ``actors/`` owns the sockets, the SQLite storage and the timer.

Rules of this module:

* Pure: no clocks, threads, sockets or global randomness. Time is the number of ``tick()`` calls;
  randomness is the ``random.Random`` passed to the constructor, so a seed replays a run exactly.
* ``step()`` never raises: a stale, malformed or hostile message is ignored and counted in
  ``RaftCore.stats``.
* Deterministic: peers are always visited in sorted order.
* ``has_ready()`` only asks; the appends that proposals call for are built in ``ready()``, once
  per Ready (a burst of proposals costs one round of messages).

What a Ready holds, and what the caller must do with it, in which order: ``ready.py``. The core
is one class in five files: this one (the events, the Ready protocol, roles, membership),
``election.py`` (pre-vote, votes, taking over), ``replication.py`` (appends and heartbeats,
both sides), ``snapshots.py`` (the snapshot sent in chunks, both sides) and the leaf modules
it uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocols.raft.log import RaftLog, Snapshot
from protocols.raft.membership import ConfChangeRejected, Membership
from protocols.raft.messages import (
    ENTRY_CONF_CHANGE,
    ENTRY_NORMAL,
    AppendEntries,
    AppendResponse,
    ConfChange,
    Entry,
    Heartbeat,
    InstallSnapshot,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
    invalid_reason,
)
from protocols.raft.election import Election
from protocols.raft.progress import Progress
from protocols.raft.reads import PendingReads, ReadState
from protocols.raft.ready import CANDIDATE, FOLLOWER, LEADER, LEARNER, PRE_CANDIDATE, HardState, Ready, SoftState
from protocols.raft.replication import Replication
from protocols.raft.snapshots import IncomingSnapshot, SnapshotTransfer
from protocols.wire import encode

if TYPE_CHECKING:  # only the type: randomness is always passed in
    import random

logger = logging.getLogger("agentflow.raft")


@dataclass(slots=True)
class RaftConfig:
    """Timing in ticks: with a 100 ms tick the defaults are a 100 ms heartbeat and a 1-2 s
    randomized election timeout; the seed's 1 s heartbeat / 5-10 s election is
    ``RaftConfig(heartbeat_ticks=10, election_ticks_min=50, election_ticks_max=100)``."""

    election_ticks_min: int = 10
    election_ticks_max: int = 20
    heartbeat_ticks: int = 1
    max_entries_per_append: int = 512
    # Bytes of entry data per append (etcd's MaxSizePerMsg), at least one entry whatever its size:
    # a count alone let 64 results of 1 MiB, or five 15 MiB workflows, make one append larger
    # than a receiver's frame limit, dropped on every try.
    max_bytes_per_append: int = 4 * 1024 * 1024
    max_inflight_appends: int = 64
    # A snapshot travels in chunks of at most this many bytes (snapshots.py), one in flight per
    # follower: well under a receiver's frame limit (64 MiB) whatever the state's size.
    max_bytes_per_snapshot_chunk: int = 4 * 1024 * 1024
    # A follower refuses a snapshot transfer declaring more: what it assembles is held in memory,
    # and SQLite stores at most 10**9 bytes in one value (SQLITE_MAX_LENGTH), so no master could
    # persist a larger snapshot anyway.
    max_snapshot_bytes: int = 1_000_000_000
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_ticks < self.election_ticks_min <= self.election_ticks_max:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks_min <= election_ticks_max")
        if min(self.max_entries_per_append, self.max_inflight_appends, self.max_bytes_per_append,
               self.max_bytes_per_snapshot_chunk, self.max_snapshot_bytes) < 1:
            raise ValueError("max_entries_per_append, max_bytes_per_append, max_inflight_appends, "
                             "max_bytes_per_snapshot_chunk and max_snapshot_bytes must be >= 1")


class NotLeader(Exception):
    """Raised by leader-only calls on a non-leader; ``leader_hint`` is who to ask instead."""

    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class RaftCore(Replication, SnapshotTransfer, Election):
    """One Raft server. See ready.py for the Ready protocol."""

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
        self._log = RaftLog()
        self._members = Membership()

        self._term = 0
        self._vote: str | None = None
        self._reported_hard_state = HardState(0, None, 0)  # as the last Ready handed it out

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
        self._reads = PendingReads()
        self._reads_awaiting_commit: list[bytes] = []
        self._read_states: list[ReadState] = []
        self._messages: list[Any] = []
        self._incoming_snapshot: IncomingSnapshot | None = None  # a snapshot arriving in chunks

        persisted = hard_state is not None or bool(entries) or snapshot is not None
        if persisted:
            self._restore(hard_state, list(entries), snapshot)
        elif voters:
            self._bootstrap(sorted(set(voters)))

        self._become_follower(self._term, None)
        self._soft_state = SoftState(self._term, self._role, self._leader_id)  # as last reported

    # ------------------------------------------------------------------ start-up

    def _bootstrap(self, voters: list[str]) -> None:
        entries = [Entry(1, i + 1, ENTRY_CONF_CHANGE, encode(ConfChange("add_voter", v)))
                   for i, v in enumerate(voters)]
        self._log.bootstrap(entries)
        self._note_appended(entries)
        self._term = 1

    def _restore(self, hard_state: HardState | None, entries: list[Entry],
                 snapshot: Snapshot | None) -> None:
        if snapshot is not None:
            self._members.restore(snapshot.meta)
        self._log.restore(snapshot, entries, hard_state.commit if hard_state is not None else None)
        self._note_appended(self._log.entries)
        if hard_state is not None:
            self._term, self._vote = hard_state.term, hard_state.vote
        self._reported_hard_state = HardState(self._term, self._vote, self._log.committed)

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
        return self._log.committed

    @property
    def applied_index(self) -> int:
        return self._log.applied

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def last_term(self) -> int:
        return self._log.last_term

    @property
    def first_index(self) -> int:
        """The first index still in the log (everything before is in the snapshot)."""
        return self._log.first_index

    @property
    def voters(self) -> list[str]:
        return list(self._members.voters)

    @property
    def learners(self) -> list[str]:
        return list(self._members.learners)

    @property
    def snapshot(self) -> Snapshot | None:
        return self._log.snapshot

    @property
    def transferee(self) -> str | None:
        return self._transferee

    def progress(self) -> dict[str, dict[str, Any]]:
        """The leader's view of each follower, for status pages; empty on a non-leader."""
        return {peer: {"match": pr.match, "next": pr.next, "state": pr.state}
                for peer, pr in sorted(self._progress.items())}

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``, or None if compacted away or beyond the log."""
        return self._log.term_at(index)

    def entries_between(self, low: int, high: int) -> list[Entry]:
        """Entries with low <= index <= high that are still in the log."""
        return self._log.entries_between(low, high)

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

    def forget_leader(self) -> None:
        """The caller believes the leader is gone (its connection dropped): this follower forgets
        it, so that it grants pre-votes at once instead of after an election timeout. It follows
        the leader again as soon as it hears from it (etcd's ForgetLeader)."""
        if self._role in (FOLLOWER, LEARNER) and self._leader_id is not None:
            self._count("leader_forgotten")
            self._leader_id = None

    def campaign(self) -> None:
        """Start an election now rather than at the election timeout: a pre-vote first when
        configured, so a leader that is in fact alive is not deposed (etcd's Campaign)."""
        if self._role != LEADER and self._promotable():
            self._election_elapsed = 0
            self._campaign(pre_vote=self.config.pre_vote, transfer=False)

    def propose(self, data: bytes) -> int:
        """Append a command; returns its index. It is committed once it shows up in
        ``committed_entries`` (at this index, with this term)."""
        if self._role != LEADER or self._transferee is not None:
            raise NotLeader(self._transferee if self._role == LEADER else self._leader_id)
        index = self._log.last_index + 1
        self._log.append(Entry(self._term, index, ENTRY_NORMAL, data))
        self._needs_broadcast = True
        return index

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a single-server membership change; one may be pending at a time, and a new
        leader accepts none until an entry of its own term has committed."""
        if self._role != LEADER or self._transferee is not None:
            raise NotLeader(self._transferee if self._role == LEADER else self._leader_id)
        refusal = self._members.refusal(change, another_pending=self._pending_conf_index > self._log.committed)
        if refusal is not None:
            raise ConfChangeRejected(refusal)
        index = self._log.last_index + 1
        entry = Entry(self._term, index, ENTRY_CONF_CHANGE, encode(change))
        self._log.append(entry)
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
        if self._log.term_at(self._log.committed) != self._term:
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
        if to not in self._members.voters or to not in self._progress:
            raise ValueError(f"cannot transfer leadership to {to!r}: not a voter")
        self._transferee = to
        self._election_elapsed = 0  # the transfer gets one full election timeout
        progress = self._progress[to]
        if progress.match == self._log.last_index:
            self._send(TimeoutNow(self._id, to, self._term))
        else:
            self._send_append(to, progress, send_if_empty=True)

    def compact(self, index: int, data: bytes) -> None:
        """The application took a snapshot (``data``) of its state at applied ``index``: keep it
        for lagging followers and drop the log up to ``index``."""
        if index <= self._log.snap_index:
            return
        if index > self._log.applied:
            raise ValueError(f"cannot compact to {index}: only {self._log.applied} applied")
        self._log.compact(index, data, *self._members.at(index))
        self._members.compact_to(index)

    # ------------------------------------------------------------------ the Ready protocol

    def has_ready(self) -> bool:
        """Whether ``ready()`` has anything to hand out. Changes nothing."""
        log = self._log
        return bool(
            self._messages
            or (self._needs_broadcast and self._role == LEADER)
            or log.has_unstable()
            or log.pending_snapshot is not None
            or log.committed > log.applied
            or self._read_states
            or self._hard_state_changed()
            or self._soft_state_changed()
        )

    def ready(self) -> Ready:
        """Take what is to be done; call ``advance(ready)`` when it is done, before the next
        ``ready()``."""
        self._flush_appends()
        log = self._log
        reported = self._reported_hard_state
        hard_state: HardState | None = HardState(self._term, self._vote, log.committed)
        if hard_state == reported:
            hard_state = None
        soft_state = None
        if self._soft_state_changed():
            soft_state = self._soft_state = SoftState(self._term, self._role, self._leader_id)
        entries = log.unstable_entries()
        snapshot = log.pending_snapshot
        must_sync = bool(entries) or snapshot is not None or (
            hard_state is not None and (hard_state.term != reported.term or hard_state.vote != reported.vote))
        messages, self._messages = self._messages, []
        read_states, self._read_states = self._read_states, []
        return Ready(hard_state, entries, snapshot, messages, log.next_committed_entries(), read_states,
                     soft_state, must_sync)

    def advance(self, ready: Ready) -> None:
        """``ready`` has been persisted, sent and applied."""
        log = self._log
        if ready.hard_state is not None:
            self._reported_hard_state = ready.hard_state
        if ready.snapshot is not None:
            log.snapshot_persisted(ready.snapshot)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1].index)
        if self._role == LEADER and self._maybe_commit():
            self._on_commit_advanced()

    def _hard_state_changed(self) -> bool:
        reported = self._reported_hard_state
        return (reported.term != self._term or reported.vote != self._vote
                or reported.commit != self._log.committed)

    def _soft_state_changed(self) -> bool:
        reported = self._soft_state
        return (reported.term != self._term or reported.role != self._role
                or reported.leader_id != self._leader_id)

    # ------------------------------------------------------------------ messages from peers

    def step(self, message: Any) -> None:
        """Handle one message from a peer. Never raises: bad input is counted in ``stats``."""
        reason = invalid_reason(message, self._id)
        if reason is not None:
            self._count("dropped_" + reason)
            return
        try:
            self._step(message)
        except Exception:  # a bug must not take the node down; the counter makes it visible
            self._count("step_error")
            logger.exception("[raft] Node %s failed to handle %s", self._id, type(message).__name__)

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
                logger.info("[raft] Node %s asked by %s to take over leadership", self._id, m.src)
                self._campaign(pre_vote=False, transfer=True)
            else:
                self._count("timeout_now_ignored")
        elif self._role != LEADER:
            self._count("response_to_non_leader")
        elif m.src not in self._progress:
            self._count("response_from_non_member")
        elif kind is AppendResponse:
            self._handle_append_response(m, self._progress[m.src])
        elif kind is SnapshotResponse:
            self._handle_snapshot_response(m, self._progress[m.src])
        else:
            self._handle_heartbeat_response(m, self._progress[m.src])

    # ------------------------------------------------------------------ roles

    def _promotable(self) -> bool:
        return self._id in self._members.voters

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = None
            self._drop_incoming_snapshot()  # a transfer belongs to one leader's term
        self._leader_id = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_ticks = self._rng.randint(
            self.config.election_ticks_min, self.config.election_ticks_max)
        self._votes = {}
        self._progress = {}
        self._transferee = None
        self._needs_broadcast = False
        self._reads = PendingReads()
        self._reads_awaiting_commit = []

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._reset(term)
        self._leader_id = leader
        self._role = LEARNER if self._id in self._members.learners else FOLLOWER

    def _peers(self) -> list[str]:
        members = self._members
        return sorted(n for n in set(members.voters) | set(members.learners) if n != self._id)

    # ------------------------------------------------------------------ configuration

    def _note_appended(self, entries: list[Entry]) -> None:
        """Membership changes take effect as soon as their entry is in the log."""
        for entry in entries:
            if entry.kind == ENTRY_CONF_CHANGE:
                if self._members.append(entry):
                    self._config_changed()
                else:
                    self._count("bad_conf_change_entry")

    def _config_changed(self) -> None:
        voters = self._members.voters
        if self._role == LEADER:
            members = set(voters) | set(self._members.learners)
            for peer in list(self._progress):
                if peer not in members:
                    del self._progress[peer]
            for peer in self._peers():
                if peer not in self._progress:
                    self._progress[peer] = Progress(self._log.last_index + 1)
                    self._needs_broadcast = True
            if self._transferee is not None and self._transferee not in voters:
                self._transferee = None
            if self._maybe_commit():
                self._on_commit_advanced()
        elif self._role in (FOLLOWER, LEARNER):
            self._role = LEARNER if self._id in self._members.learners else FOLLOWER
        elif self._id not in voters:
            self._become_follower(self._term, None)

    # ------------------------------------------------------------------ plumbing

    def _send(self, message: Any) -> None:
        self._messages.append(message)

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1
