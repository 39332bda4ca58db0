"""What a simulated Raft node keeps (tests/raftsim.py, tests/raftnet.py): its ``Disk`` (what it
persisted from its Readys, the only thing a crash leaves) and its ``StateMachine``."""

from __future__ import annotations

import hashlib

from protocols.raft import ENTRY_NORMAL, Entry, HardState, Ready, Snapshot
from protocols.wire import decode, encode


class Disk:
    """What one node persisted: its hard state, log and snapshot. Like the RaftActor, it writes
    only the Readys that must be synced: a change of the commit index alone waits for the next
    write (so a restart may come back with an older commit index)."""

    def __init__(self) -> None:
        self.hard_state: HardState | None = None
        self.entries: list[Entry] = []
        self.snapshot: Snapshot | None = None
        self.reported: HardState | None = None  # the newest hard state a Ready reported

    @property
    def first_index(self) -> int:
        return (self.snapshot.meta.index if self.snapshot else 0) + 1

    def save(self, ready: Ready) -> None:
        if ready.hard_state is not None:
            self.reported = ready.hard_state
        if not ready.must_sync:
            return
        if ready.snapshot is not None:
            self.snapshot = ready.snapshot
            self.entries = []
        if ready.entries:
            # Overwrite a conflicting suffix: drop everything from the first new index on.
            del self.entries[max(0, ready.entries[0].index - self.first_index):]
            self.entries.extend(ready.entries)
        self.hard_state = self.reported

    def compact(self, snapshot: Snapshot) -> None:
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
