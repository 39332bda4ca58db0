"""The leader's view of its followers, and the majority arithmetic over a configuration
(etcd's tracker and quorum packages).

Role: a ``Progress`` per follower says how far its log is known to match the leader's and how
the leader sends to it (``PROBE``: one append at a time until the match is known;
``REPLICATE``: pipelined appends, at most ``max_inflight_appends`` unacknowledged;
``SNAPSHOT``: the snapshot is being sent, a chunk at a time). The functions below count votes,
find the index a majority of voters has stored, and tell whether a majority was heard from
recently.

Rules of this module: voters are visited in the configuration's (sorted) order; a node counts
itself only for what it has made durable.
"""

from __future__ import annotations

from collections import deque

from protocols.raft.log import Snapshot

# Replication states of a follower as seen by the leader (etcd's tracker.StateType).
PROBE = "probe"  # one append at a time until the follower's match index is known
REPLICATE = "replicate"  # optimistic pipelining: next_index runs ahead of acknowledgements
SNAPSHOT = "snapshot"  # the snapshot is being sent in chunks; no appends until it is installed

# Outcomes of an election.
WON = "won"
LOST = "lost"
PENDING = "pending"


class Progress:
    """The leader's view of one follower (etcd's tracker.Progress)."""

    __slots__ = ("match", "next", "state", "paused", "inflight", "pending_snapshot",
                 "recent_active", "snapshot_elapsed", "snapshot", "snapshot_offset")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.paused = False  # probe: an append is outstanding
        self.inflight: deque[int] = deque()  # replicate: last index of each unacknowledged append
        self.pending_snapshot = 0
        self.recent_active = True
        self.snapshot_elapsed = 0  # ticks since the snapshot's transfer last moved on
        # snapshot: the one being sent, kept until it is installed even if the leader takes a
        # newer one meanwhile (every chunk of a transfer comes from the same bytes);
        # snapshot_offset: where the chunk in flight starts (what the follower holds of it).
        self.snapshot: Snapshot | None = None
        self.snapshot_offset = 0

    def become_probe(self) -> None:
        if self.state == SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = PROBE
        self.paused = False
        self.inflight.clear()
        self.pending_snapshot = 0
        self.snapshot = None

    def become_replicate(self) -> None:
        self.state = REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.inflight.clear()
        self.pending_snapshot = 0
        self.snapshot = None

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self.state = SNAPSHOT
        self.pending_snapshot = snapshot.meta.index
        self.snapshot = snapshot
        self.snapshot_offset = 0
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


def quorum(voters: list[str]) -> int:
    return len(voters) // 2 + 1


def granted_votes(voters: list[str], votes: dict[str, bool]) -> int:
    return sum(1 for v in voters if votes.get(v) is True)


def vote_result(voters: list[str], votes: dict[str, bool]) -> str:
    """WON once a majority granted, LOST once a majority can no longer grant, else PENDING."""
    granted = granted_votes(voters, votes)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    needed = quorum(voters)
    if granted >= needed:
        return WON
    if rejected > len(voters) - needed:
        return LOST
    return PENDING


def committed_index(voters: list[str], progress: dict[str, Progress], self_id: str, self_durable: int) -> int:
    """The largest index stored by a majority of voters (0 without voters); ``self_durable`` is
    what this node has persisted itself."""
    matches = []
    for voter in voters:
        if voter == self_id:
            matches.append(self_durable)
        else:
            peer = progress.get(voter)
            matches.append(peer.match if peer is not None else 0)
    if not matches:
        return 0
    matches.sort(reverse=True)
    return matches[len(matches) // 2]


def quorum_recently_active(voters: list[str], progress: dict[str, Progress], self_id: str) -> bool:
    """Whether a majority of voters was heard from since the last call (which starts a new period)."""
    active = 0
    for voter in voters:
        if voter == self_id:
            active += 1
        else:
            peer = progress.get(voter)
            if peer is not None and peer.recent_active:
                active += 1
    for peer in progress.values():
        peer.recent_active = False
    return active >= quorum(voters)
