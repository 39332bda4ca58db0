"""The Raft log of one server: entries after the snapshot, what is not yet durable, what is
committed and what is applied (etcd's raftLog and its unstable part, in one class).

Role: ``RaftLog`` answers the core's questions about the log (the term at an index, the
entries in a range, the last index whose term is at most some term) and keeps its four marks
in order: ``first_index - 1`` (covered by the snapshot) <= ``applied`` <= ``committed`` <=
``last_index``, and ``durable_index`` (handed out in a Ready and reported persisted). The
core decides what goes in; the log never checks a rule of the protocol.

Rules of this class:

* ``entries[k]`` has index ``snap_index + 1 + k``; ``(snap_index, snap_term)`` is the last
  entry the snapshot covers (``(0, 0)`` for a log never compacted).
* Entries from ``unstable_from`` on have not been handed out in a Ready to be persisted;
  overwriting a conflicting suffix moves ``unstable_from`` back, so they are handed out again.
* A snapshot received from the leader (``install``) replaces the whole log and is pending
  until the caller reports it persisted; committed entries are handed out only after it.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from protocols.raft.messages import Entry, SnapshotMeta


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes


class RaftLog:
    __slots__ = ("snapshot", "snap_index", "snap_term", "entries", "unstable_from", "pending_snapshot",
                 "committed", "applied")

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.snap_index = 0
        self.snap_term = 0
        self.entries: list[Entry] = []
        self.unstable_from = 1  # first index not yet handed out in a Ready to be persisted
        self.pending_snapshot: Snapshot | None = None  # installed from the leader, not yet persisted
        self.committed = 0
        self.applied = 0

    def bootstrap(self, entries: list[Entry]) -> None:
        """The founding entries of a fresh cluster: identical on every founder, committed by fiat
        (and still to be persisted)."""
        self.entries = list(entries)
        self.committed = len(entries)

    def restore(self, snapshot: Snapshot | None, entries: list[Entry], commit: int | None) -> None:
        """What a restarted server persisted: all of it is durable, and applied up to the snapshot."""
        if snapshot is not None:
            self.snapshot = snapshot
            self.snap_index, self.snap_term = snapshot.meta.index, snapshot.meta.term
        self.entries = [e for e in entries if e.index > self.snap_index]
        self.unstable_from = self.last_index + 1
        self.committed = self.snap_index if commit is None else min(max(commit, self.snap_index), self.last_index)
        self.applied = self.snap_index

    # ------------------------------------------------------------------ questions

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    @property
    def first_index(self) -> int:
        """The first index still in the log (everything before is in the snapshot)."""
        return self.snap_index + 1

    @property
    def durable_index(self) -> int:
        """The last index handed out to be persisted (and, once advanced, persisted)."""
        return self.unstable_from - 1

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``, or None if compacted away or beyond the log."""
        offset = index - self.snap_index
        if offset == 0:
            return self.snap_term
        if 0 < offset <= len(self.entries):
            return self.entries[offset - 1].term
        return None

    def entries_between(self, low: int, high: int) -> list[Entry]:
        """Entries with low <= index <= high that are still in the log."""
        low = max(low, self.snap_index + 1)
        return self.entries[low - self.snap_index - 1: max(0, high - self.snap_index)]

    def last_index_with_term_at_most(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose entry's term is <= ``term`` (terms only grow
        along the log, so a bisection finds it)."""
        index = min(index, self.last_index)
        if index <= self.snap_index:
            return index
        position = bisect_right(self.entries, term, hi=index - self.snap_index, key=lambda entry: entry.term)
        return self.snap_index + position

    def first_new(self, entries: list[Entry]) -> int:
        """How many of ``entries`` (which follow a matching entry) the log holds already."""
        last_index = self.last_index
        present = 0
        for entry in entries:
            if entry.index > last_index or self.term_at(entry.index) != entry.term:
                break
            present += 1
        return present

    def has_unstable(self) -> bool:
        return self.unstable_from <= self.last_index

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.unstable_from - self.snap_index - 1:]

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries not yet applied (none of those a pending snapshot covers)."""
        applied = self.applied
        if self.pending_snapshot is not None:
            applied = max(applied, self.pending_snapshot.meta.index)
        return self.entries_between(applied + 1, self.committed)

    # ------------------------------------------------------------------ changes

    def append(self, entry: Entry) -> None:
        """One entry of the leader's own, after the last."""
        self.entries.append(entry)

    def truncate_and_append(self, entries: list[Entry]) -> bool:
        """Append ``entries`` from the leader, first dropping our entries from the first one's index
        on; True if a suffix was dropped."""
        first = entries[0].index
        truncated = first <= self.last_index
        if truncated:
            del self.entries[first - self.snap_index - 1:]
            self.unstable_from = min(self.unstable_from, first)
        self.entries.extend(entries)
        return truncated

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to (index, term) were persisted. Same term at the same index means the same
        log up to it (log matching): if it is still there, everything before it is stable too."""
        if self.term_at(index) == term:
            self.unstable_from = max(self.unstable_from, index + 1)

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            self.committed = index

    def applied_to(self, index: int) -> None:
        self.applied = max(self.applied, index)

    def install(self, snapshot: Snapshot) -> None:
        """The leader's snapshot replaces the whole log; it is pending until persisted."""
        self.snapshot = snapshot
        self.pending_snapshot = snapshot
        self.entries = []
        self.snap_index, self.snap_term = snapshot.meta.index, snapshot.meta.term
        self.unstable_from = snapshot.meta.index + 1
        self.committed = snapshot.meta.index

    def snapshot_persisted(self, snapshot: Snapshot) -> None:
        if self.pending_snapshot is snapshot:
            self.pending_snapshot = None
        self.applied_to(snapshot.meta.index)

    def compact(self, index: int, data: bytes, voters: list[str], learners: list[str]) -> Snapshot:
        """The application's own snapshot at applied ``index`` (with the configuration there):
        kept for lagging followers; the entries it covers are dropped."""
        term = self.term_at(index)
        self.snapshot = Snapshot(SnapshotMeta(index, term, list(voters), list(learners)), data)
        del self.entries[: index - self.snap_index]
        self.snap_index, self.snap_term = index, term
        return self.snapshot
