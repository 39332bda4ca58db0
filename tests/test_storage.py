"""Tests of the SQLite store of a Raft node (runtime/storage.py): round trips, suffix truncation,
snapshots and compaction, restart, a kill -9 in the middle of saving, and files we must refuse."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from runtime.storage import (
    SCHEMA_VERSION,
    RaftStorage,
    StoredEntry,
    StoredHardState,
    StoredSnapshot,
    StorageError,
)

# Stand-ins with the Raft core's attribute names: storage must not need protocols/raft/.
Entry = namedtuple("Entry", "term index kind data")
HardState = namedtuple("HardState", "term vote commit")
SnapshotMeta = namedtuple("SnapshotMeta", "index term voters learners")
Snapshot = namedtuple("Snapshot", "meta data")

REPO = Path(__file__).resolve().parent.parent


def entries(first, last, term=1, tag=b""):
    return [Entry(term, index, 0, tag + b"e%d" % index) for index in range(first, last + 1)]


def stored(items):
    return [StoredEntry(e.term, e.index, e.kind, e.data) for e in items]


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "raft.db")


@pytest.fixture
def store(path):
    with RaftStorage(path) as storage:
        yield storage


def test_new_store_is_empty(store):
    state = store.load()
    assert (state.hard_state, state.snapshot, state.entries) == (None, None, [])
    assert store.last_index == 0


def test_round_trip(store):
    batch = entries(1, 5) + [Entry(2, 6, 3, b"\x00\xff" * 100)]
    store.save(hard_state=HardState(2, "n2", 4), entries=batch)
    state = store.load()
    assert state.hard_state == StoredHardState(2, "n2", 4)
    assert state.entries == stored(batch)
    store.save(hard_state=HardState(3, None, 6))
    assert store.load().hard_state == StoredHardState(3, None, 6)
    assert store.load().entries == stored(batch)  # hard state alone leaves the log
    assert store.last_index == 6


def test_plain_tuples_are_entries(store):
    store.save(entries=[(1, 1, 0, b"a"), (1, 2, 5, b"b")])
    assert store.load().entries == [StoredEntry(1, 1, 0, b"a"), StoredEntry(1, 2, 5, b"b")]


def test_entries_replace_the_conflicting_suffix(store):
    store.save(entries=entries(1, 10))
    store.save(entries=entries(6, 7, term=2, tag=b"new"))
    assert store.load().entries == stored(entries(1, 5) + entries(6, 7, term=2, tag=b"new"))
    assert store.last_index == 7
    store.save(entries=entries(8, 9, term=2))
    assert [e.index for e in store.load().entries] == list(range(1, 10))


def test_a_batch_of_any_size_is_stored_whole_and_in_order(store):
    # Whole statements of 64 rows and a remainder: 1, 64, 130 and 200 rows.
    batches = [entries(1, 1), entries(2, 65), entries(66, 195), entries(196, 395)]
    for batch in batches:
        store.save(entries=batch)
    assert store.load().entries == stored([entry for batch in batches for entry in batch])


def test_gaps_and_disorder_are_refused_without_writing(store):
    store.save(entries=entries(1, 3))
    with pytest.raises(ValueError, match="gap"):
        store.save(hard_state=HardState(5, None, 0), entries=entries(5, 6))
    with pytest.raises(ValueError, match="consecutive"):
        store.save(entries=[entries(4, 4)[0], entries(6, 6)[0]])
    state = store.load()
    assert state.hard_state is None and state.entries == stored(entries(1, 3))
    store.save(entries=entries(4, 4))  # the store still works after a refusal


def test_snapshot_in_save_replaces_covered_entries(store):
    store.save(entries=entries(1, 10))
    store.save(snapshot=Snapshot(SnapshotMeta(6, 1, ["a", "b"], ["c"]), b"state@6"))
    state = store.load()
    assert state.snapshot == StoredSnapshot(6, 1, ["a", "b"], ["c"], b"state@6")
    assert state.entries == stored(entries(7, 10))
    store.save(snapshot=Snapshot(SnapshotMeta(8, 1, ["a"], []), b"state@8"))
    assert store.load().snapshot.data == b"state@8"
    assert [e.index for e in store.load().entries] == [9, 10]
    with pytest.raises(ValueError, match="older"):
        store.save(snapshot=Snapshot(SnapshotMeta(7, 1, ["a"], []), b"state@7"))


def test_install_snapshot_that_disagrees_with_the_log_drops_it(store):
    # A follower holds entries of term 1 up to 10; the leader's snapshot at 8 is of term 2.
    store.save(entries=entries(1, 10))
    store.save(snapshot=Snapshot(SnapshotMeta(8, 2, ["a"], []), b"s"), entries=entries(9, 9, term=2))
    state = store.load()
    assert state.snapshot.index == 8 and state.entries == stored(entries(9, 9, term=2))
    assert store.last_index == 9


def test_install_snapshot_beyond_the_log(store):
    store.save(entries=entries(1, 3))
    store.save(snapshot=Snapshot(SnapshotMeta(50, 4, ["a"], []), b"s"))
    assert store.load().entries == [] and store.last_index == 50
    store.save(entries=entries(51, 52, term=4))
    with pytest.raises(ValueError, match="gap"):
        store.save(entries=entries(60, 60, term=4))
    # Entries the snapshot covers are compacted already: they are skipped, not stored.
    store.save(entries=entries(49, 53, term=4))
    assert [e.index for e in store.load().entries] == [51, 52, 53]


def test_compact_keeps_a_tail_and_is_repeatable(store, path):
    store.save(entries=entries(1, 20))
    store.compact(15, Snapshot(SnapshotMeta(15, 1, ["a"], []), b"s15"))
    assert [e.index for e in store.load().entries] == list(range(16, 21))
    store.compact(15, Snapshot(SnapshotMeta(15, 1, ["a"], []), b"s15 again"))
    assert [e.index for e in store.load().entries] == list(range(16, 21))
    # Keep entries 18..20 behind a snapshot at 20 (for slow followers).
    store.compact(17, Snapshot(SnapshotMeta(20, 1, ["a"], []), b"s20"))
    rows = sqlite3.connect(path).execute("SELECT entry_index FROM entries").fetchall()
    assert [row[0] for row in rows] == [18, 19, 20]
    assert store.load().entries == [] and store.load().snapshot.index == 20
    with pytest.raises(ValueError):
        store.compact(21, Snapshot(SnapshotMeta(20, 1, ["a"], []), b"s"))


def test_restart_recovers_everything(path):
    with RaftStorage(path) as first:
        first.save(hard_state=HardState(3, "n1", 9), entries=entries(1, 12, term=3))
        first.compact(5, Snapshot(SnapshotMeta(5, 3, ["n1", "n2", "n3"], []), b"snap"))
        before = first.load()
    with RaftStorage(path) as second:
        assert second.load() == before
        assert (second.last_index, second.snapshot_index) == (12, 5)
        second.save(entries=entries(13, 13, term=3))
        assert second.load().entries[-1].index == 13


def test_the_store_is_wal_and_fully_synchronous(store):
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# The child saves batches and prints the last index after each save returned; the parent kills
# it with SIGKILL mid-stream. Every printed index must be in the file (no fsync is tested here:
# the OS survives, so this checks the atomicity of each transaction and recovery of the WAL).
CRASH_CHILD = """
import sys
from collections import namedtuple
from runtime.storage import RaftStorage
HardState = namedtuple("HardState", "term vote commit")
store = RaftStorage(sys.argv[1])
index = 0
while True:
    batch = [(1, i, 0, b"x" * 200) for i in range(index + 1, index + 51)]
    store.save(hard_state=HardState(1, "child", index), entries=batch)
    index += 50
    print(index, flush=True)
"""


def test_kill_9_loses_nothing_that_save_returned_for(path):
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, path], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    acknowledged = 0
    deadline = time.monotonic() + 30
    try:
        while acknowledged < 5000 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged = int(line)
    finally:
        child.kill()  # SIGKILL: no cleanup, no close()
        child.wait(timeout=10)
        child.stdout.close()
    assert acknowledged >= 5000, "the child stopped saving early"
    with RaftStorage(path) as reopened:
        state = reopened.load()
    indexes = [entry.index for entry in state.entries]
    assert indexes[: acknowledged] == list(range(1, acknowledged + 1))
    assert len(indexes) % 50 == 0  # whole transactions only
    assert state.hard_state.term == 1


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StorageError, match="not a readable SQLite file"):
        RaftStorage(str(garbage))


def test_a_corrupt_store_gives_a_clear_error(path):
    with RaftStorage(path) as store:
        store.save(entries=entries(1, 2000, tag=b"x" * 200))
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(Path(path).read_bytes())
    page_size = 4096
    data[page_size * 3 : page_size * 20] = b"\xa5" * (page_size * 17)  # trash b-tree pages
    Path(path).write_bytes(bytes(data))
    with pytest.raises(StorageError, match="raft.db"):
        with RaftStorage(path) as store:
            store.load()


def test_another_applications_sqlite_file_is_refused(tmp_path):
    other = tmp_path / "other.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE things (x)")
    connection.commit()
    connection.close()
    with pytest.raises(StorageError, match="not an AgentFlow Raft store"):
        RaftStorage(str(other))


def test_a_newer_schema_is_refused(path):
    RaftStorage(path).close()
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    connection.close()
    with pytest.raises(StorageError, match="newer AgentFlow"):
        RaftStorage(path)


def test_round_trip_of_the_raft_cores_own_values(store):
    raft = pytest.importorskip("protocols.raft")
    batch = [raft.Entry(1, 1, 0, b"a"), raft.Entry(2, 2, 1, b"b")]
    hard_state = raft.HardState(2, "n1", 1)
    store.save(hard_state=hard_state, entries=batch)
    state = store.load()
    assert [raft.Entry(e.term, e.index, e.kind, e.data) for e in state.entries] == batch
    assert raft.HardState(state.hard_state.term, state.hard_state.vote, state.hard_state.commit) == hard_state
    snapshot = raft.Snapshot(raft.SnapshotMeta(1, 1, ["n1", "n2"], ["n3"]), b"state")
    store.compact(1, snapshot)
    loaded = store.load().snapshot
    meta = raft.SnapshotMeta(loaded.index, loaded.term, loaded.voters, loaded.learners)
    assert raft.Snapshot(meta, loaded.data) == snapshot
