"""What a simulated Raft node keeps (tests/raftsim.py, tests/raftnet.py): its ``Disk`` (what it
persisted from its Readys, the only thing a crash leaves) and its ``StateMachine``."""

from __future__ import annotations

import hashlib
from collections import deque

from protocols.raft import ENTRY_NORMAL, Entry, HardState, Ready, Snapshot
from protocols.wire import decode, encode


class Disk:
    """What one node persisted: its hard state, log and snapshot. Like the RaftActor, it writes
    only the Readys that must be synced: a change of the commit index alone waits for the next
    write (so a restart may come back with an older commit index).

    Like the RaftActor's writer thread, it also takes a leader's own appends to write in the
    background (``save_later``): they are durable only once written (``write_due``, or before
    any synchronous write or compaction, in order), each reported in ``reports`` for the core's
    ``entries_persisted``, and lost if the node crashes first (``crash``)."""

    def __init__(self) -> None:
        self.hard_state: HardState | None = None
        self.entries: list[Entry] = []
        self.snapshot: Snapshot | None = None
        self.reported: HardState | None = None  # the newest hard state a Ready reported
        self.in_flight: deque[tuple[int, list[Entry], HardState | None]] = deque()  # (due tick, ...)
        self.reports: list[tuple[int, int]] = []  # (index, term) of the writes done, to report

    @property
    def first_index(self) -> int:
        return (self.snapshot.meta.index if self.snapshot else 0) + 1

    def save(self, ready: Ready) -> None:
        if ready.hard_state is not None:
            self.reported = ready.hard_state
        if not ready.must_sync:
            return
        self.drain()
        if ready.snapshot is not None:
            self.snapshot = ready.snapshot
            self.entries = []
        self._write(ready.entries, self.reported)

    def save_later(self, ready: Ready, due_tick: int) -> None:
        if ready.hard_state is not None:
            self.reported = ready.hard_state
        self.in_flight.append((due_tick, ready.entries, self.reported))

    def write_due(self, now: int) -> None:
        while self.in_flight and self.in_flight[0][0] <= now:
            self._write_next()

    def drain(self) -> None:
        while self.in_flight:
            self._write_next()

    def crash(self) -> None:
        self.in_flight.clear()
        self.reports.clear()

    def _write_next(self) -> None:
        _, entries, hard_state = self.in_flight.popleft()
        self._write(entries, hard_state)
        self.reports.append((entries[-1].index, entries[-1].term))

    def _write(self, entries: list[Entry], hard_state: HardState | None) -> None:
        if entries:
            # Overwrite a conflicting suffix: drop everything from the first new index on.
            del self.entries[max(0, entries[0].index - self.first_index):]
            self.entries.extend(entries)
        self.hard_state = hard_state

    def compact(self, snapshot: Snapshot) -> None:
        self.drain()
        drop = snapshot.meta.index - self.first_index + 1
        self.snapshot = snapshot
        del self.entries[:max(0, drop)]


class StateMachine:
    """Applies commands into a running digest; the snapshot is (index, digest)."""

    def __init__(self) -> None:
        self.applied_index = 0
        self.digest = b""

    def apply(self, entry: Entry) -> None:
        if entry.kind == ENTRY_NORMAL:
            self.digest = hashlib.blake2b(self.digest + entry.data, digest_size=8).digest()
        self.applied_index = entry.index

    def snapshot_data(self) -> bytes:
        return encode([self.applied_index, self.digest])

    def restore(self, data: bytes) -> None:
        self.applied_index, self.digest = decode(data)
