"""Durable storage of one Raft node: hard state, log entries and the latest snapshot, in SQLite.

Role: the Raft core (protocols/raft/) decides what must be persisted; the actor that drives it
hands that to ``RaftStorage.save`` before it sends messages or acknowledges anything (ARCHITECTURE §3,
rule 1), and reads it all back with ``load`` when the node restarts.

Rules of this module:

* One SQLite file per master, in WAL mode with ``synchronous=FULL``: when ``save`` or
  ``compact`` returns, what it wrote survives a crash of the process or of the machine.
* Group commit: one ``save`` is one transaction, whatever it holds (hard state, any number of
  entries, a snapshot). Call it once per batch (a leader flush, a follower wake-up), never once
  per entry: a transaction costs one fsync (~0.1-0.2 ms here), an extra entry a few µs.
* Entries are written with ``executemany``. Writing entries that start at index ``i`` first
  deletes every stored entry with index ``>= i``: that is how a follower drops a conflicting
  suffix. Entries must be consecutive and must not leave a gap after the stored log.
* A snapshot replaces the stored one and deletes the entries it covers (index ``<=`` its
  index). If the stored entry at the snapshot's index has another term, the stored log
  disagrees with the snapshot, and every entry after it goes too (Raft §7, InstallSnapshot).
  Entries at or below the stored snapshot's index are compacted and never written.
* Duck typing, so this file does not import the Raft core: an entry is any object with
  ``term, index, kind, data`` (or a plain tuple in that order); a hard state has ``term, vote,
  commit``; a snapshot has ``data`` and ``meta`` with ``index, term, voters, learners`` (or
  those attributes on itself). ``load`` returns this module's plain dataclasses.
* The file says what it is: ``PRAGMA application_id`` marks it as an AgentFlow Raft store and
  ``PRAGMA user_version`` is its schema version. A file that is not SQLite, belongs to something
  else, or has a newer schema is refused with ``StorageError`` and a message naming the file.
* Threads: none. The connection is opened with ``check_same_thread=False`` so that the node can
  open the store on one thread and hand it to the thread that runs Raft (the transport thread
  or the Raft actor); from then on that one thread owns it. It is not safe to call from two
  threads at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

SCHEMA_VERSION = 1
# "AFRS": AgentFlow Raft Store, in the SQLite header, so we never write into someone else's file.
APPLICATION_ID = 0x41465253

_SCHEMA = (
    """CREATE TABLE hard_state (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        term INTEGER NOT NULL,
        vote TEXT,
        commit_index INTEGER NOT NULL)""",
    """CREATE TABLE snapshot (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        snapshot_index INTEGER NOT NULL,
        term INTEGER NOT NULL,
        voters TEXT NOT NULL,
        learners TEXT NOT NULL,
        data BLOB NOT NULL)""",
    # INTEGER PRIMARY KEY is the rowid: entries are stored in index order, no second b-tree.
    """CREATE TABLE entries (
        entry_index INTEGER PRIMARY KEY,
        term INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        data BLOB NOT NULL)""",
)
_TABLES = ("entries", "hard_state", "snapshot")


class StorageError(Exception):
    """The store cannot be opened, read or written: not SQLite, not ours, corrupt, a newer
    schema, or a failing disk. The message names the file."""


@dataclass(slots=True)
class StoredEntry:
    term: int
    index: int
    kind: int
    data: bytes


@dataclass(slots=True)
class StoredHardState:
    term: int
    vote: str | None
    commit: int


@dataclass(slots=True)
class StoredSnapshot:
    index: int
    term: int
    voters: list[str]
    learners: list[str]
    data: bytes


@dataclass(slots=True)
class StoredState:
    """Everything ``load`` found; ``entries`` follow the snapshot, in index order."""

    hard_state: StoredHardState | None = None
    snapshot: StoredSnapshot | None = None
    entries: list[StoredEntry] = field(default_factory=list)


_INSERT_ENTRY = "INSERT INTO entries (entry_index, term, kind, data) VALUES (?, ?, ?, ?)"
_CHUNK_ROWS = 64
_INSERT_CHUNK = "INSERT INTO entries (entry_index, term, kind, data) VALUES " + ", ".join(["(?, ?, ?, ?)"] * _CHUNK_ROWS)


def _insert_entries(db: sqlite3.Connection, rows: list[tuple]) -> None:
    """Insert rows 64 to a statement (a multi-row VALUES costs SQLite a third less per row than
    executemany's statement per row); the remainder one by one."""
    whole = len(rows) - len(rows) % _CHUNK_ROWS
    for start in range(0, whole, _CHUNK_ROWS):
        db.execute(_INSERT_CHUNK, [value for row in rows[start:start + _CHUNK_ROWS] for value in row])
    if whole < len(rows):
        db.executemany(_INSERT_ENTRY, rows[whole:])


def _entry_row(entry: Any) -> tuple[int, int, int, bytes]:
    """(index, term, kind, data) of an entry object or a plain (term, index, kind, data) tuple."""
    if type(entry) is tuple:
        term, index, kind, data = entry
        return index, term, kind, data
    return entry.index, entry.term, entry.kind, entry.data


def _snapshot_row(snapshot: Any) -> tuple[int, int, str, str, bytes]:
    meta = getattr(snapshot, "meta", snapshot)
    return (
        meta.index,
        meta.term,
        json.dumps(list(meta.voters)),
        json.dumps(list(meta.learners)),
        bytes(snapshot.data),
    )


def _check_consecutive(rows: list[tuple]) -> None:
    expected = rows[0][0] if rows else 0
    for row in rows:
        if row[0] != expected:
            raise ValueError(f"entries are not consecutive: {row[0]} after {expected - 1}")
        expected += 1


class RaftStorage:
    """The SQLite file of one Raft node. See the module docstring for the rules."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        # Called with the seconds each save's COMMIT (the fsync) took: the fsync histogram.
        self.on_commit_s: Callable[[float], None] | None = None
        # When the write under way began (None between writes): read from other threads, so that
        # a disk that hangs, and with it the thread that writes, can still be reported.
        self._write_started_s: float | None = None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per save.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open: {exc}") from exc
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        try:
            application_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            schema_version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = [row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: not a readable SQLite file ({exc})") from exc
        if application_id == 0 and schema_version == 0 and not tables:
            self._create()
        elif application_id != APPLICATION_ID:
            raise StorageError(f"{self.path}: not an AgentFlow Raft store (application_id {application_id:#x})")
        elif schema_version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path}: schema version {schema_version} was written by a newer AgentFlow; "
                f"this one reads up to version {SCHEMA_VERSION}"
            )
        elif schema_version < 1 or sorted(tables) != list(_TABLES):
            raise StorageError(f"{self.path}: damaged AgentFlow Raft store (schema {schema_version}, tables {tables})")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StorageError(f"{self.path}: cannot use WAL mode (journal_mode is {mode})")
        # FULL: the WAL is fsync'd at every commit, so a returned save survives power loss.
        self._db.execute("PRAGMA synchronous = FULL")
        # What the write checks need, kept in memory rather than read back per save.
        try:
            self._snapshot_index, self._snapshot_term, self._last_index = self._db.execute(
                "SELECT coalesce((SELECT snapshot_index FROM snapshot), 0),"
                " coalesce((SELECT term FROM snapshot), 0),"
                " coalesce((SELECT max(entry_index) FROM entries), 0)"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: cannot read the Raft store ({exc})") from exc
        self._last_index = max(self._last_index, self._snapshot_index)

    def _create(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------- reads

    def load(self) -> StoredState:
        """Read back everything stored: hard state, snapshot and the entries after it."""
        try:
            hard = self._db.execute("SELECT term, vote, commit_index FROM hard_state").fetchone()
            snap = self._db.execute(
                "SELECT snapshot_index, term, voters, learners, data FROM snapshot"
            ).fetchone()
            after = snap[0] if snap else 0
            rows = self._db.execute(
                "SELECT term, entry_index, kind, data FROM entries WHERE entry_index > ? ORDER BY entry_index",
                (after,),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: cannot read the Raft store ({exc})") from exc
        return StoredState(
            hard_state=StoredHardState(*hard) if hard else None,
            snapshot=(
                StoredSnapshot(snap[0], snap[1], json.loads(snap[2]), json.loads(snap[3]), snap[4]) if snap else None
            ),
            entries=[StoredEntry(*row) for row in rows],
        )

    @property
    def last_index(self) -> int:
        """Index of the last stored entry (or of the snapshot when no entry follows it); 0 if empty."""
        return self._last_index

    @property
    def snapshot_index(self) -> int:
        return self._snapshot_index

    # ----------------------------------------------------------------- writes

    def save(self, hard_state: Any = None, entries: Iterable[Any] = (), snapshot: Any = None) -> None:
        """Persist a Raft batch in one transaction; durable when it returns.

        Order inside it: the snapshot (if any), then the entries (truncating the stored suffix
        they replace), then the hard state. Raises ValueError, writing nothing, on entries that
        are not consecutive or would leave a gap, and on a snapshot older than the stored one."""
        self._save(hard_state, entries, snapshot, None)

    def _save(self, hard_state: Any, entries: Iterable[Any], snapshot: Any, compact_upto: int | None) -> None:
        rows = [_entry_row(entry) for entry in entries]
        snapshot_row = _snapshot_row(snapshot) if snapshot is not None else None
        if snapshot_row is not None and snapshot_row[0] < self._snapshot_index:
            raise ValueError(f"snapshot at {snapshot_row[0]} is older than the stored one at {self._snapshot_index}")
        snapshot_index = snapshot_row[0] if snapshot_row else self._snapshot_index
        if rows and rows[0][0] <= snapshot_index:
            rows = [row for row in rows if row[0] > snapshot_index]  # compacted already
        _check_consecutive(rows)
        last_index = self._last_index
        db = self._db
        self._write_started_s = time.monotonic()
        try:
            # BEGIN inside the try: a disk that fails there (an I/O error, a lock it cannot take)
            # must also come out as a StorageError, which the RaftActor holds and retries.
            db.execute("BEGIN IMMEDIATE")
            if snapshot_row is not None:
                delete_upto = snapshot_row[0] if compact_upto is None else compact_upto
                last_index = self._write_snapshot(snapshot_row, delete_upto)
            if rows:
                if rows[0][0] > last_index + 1:
                    raise ValueError(f"entries start at {rows[0][0]} but the log ends at {last_index}: a gap")
                if rows[0][0] <= last_index:  # a conflicting suffix is replaced (an append deletes nothing)
                    db.execute("DELETE FROM entries WHERE entry_index >= ?", (rows[0][0],))
                _insert_entries(db, rows)
                last_index = rows[-1][0]
            if hard_state is not None:
                db.execute(
                    "INSERT OR REPLACE INTO hard_state (id, term, vote, commit_index) VALUES (0, ?, ?, ?)",
                    (hard_state.term, hard_state.vote, hard_state.commit),
                )
            started_s = time.perf_counter()
            db.execute("COMMIT")
            if self.on_commit_s is not None:
                self.on_commit_s(time.perf_counter() - started_s)
        except BaseException as exc:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # a failing disk may refuse this too: the write's own error says more
            if isinstance(exc, sqlite3.DatabaseError):  # disk full, I/O error, corruption
                raise StorageError(f"{self.path}: cannot write the Raft store ({exc})") from exc
            raise
        finally:
            self._write_started_s = None
        self._last_index = last_index
        if snapshot_row is not None:
            self._snapshot_index, self._snapshot_term = snapshot_row[0], snapshot_row[1]

    def write_running_s(self) -> float:
        """How long the write under way has run (0.0 if none): any thread may ask."""
        started_s = self._write_started_s
        return 0.0 if started_s is None else max(0.0, time.monotonic() - started_s)

    def compact(self, upto_index: int, snapshot: Any) -> None:
        """Store ``snapshot`` and delete the entries up to ``upto_index``, in one transaction.

        ``upto_index`` may stay below the snapshot's index to keep a tail of entries for slow
        followers; ``load`` still returns only the entries after the snapshot."""
        snapshot_index = getattr(snapshot, "meta", snapshot).index
        if upto_index > snapshot_index:
            raise ValueError(f"compact up to {upto_index} is past the snapshot at {snapshot_index}")
        self._save(None, (), snapshot, upto_index)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RaftStorage:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _write_snapshot(self, row: tuple, delete_upto: int) -> int:
        """Replace the snapshot and delete entries up to ``delete_upto`` (inside the caller's
        transaction); returns the last index of the log it leaves."""
        index, term = row[0], row[1]
        db = self._db
        stored = db.execute("SELECT term FROM entries WHERE entry_index = ?", (index,)).fetchone()
        same_as_stored_snapshot = (index, term) == (self._snapshot_index, self._snapshot_term)
        if (stored is not None and stored[0] == term) or same_as_stored_snapshot:
            db.execute("DELETE FROM entries WHERE entry_index <= ?", (delete_upto,))
            last_index = max(self._last_index, index)
        else:
            # The stored log does not hold the snapshot's last entry: nothing after it can be
            # trusted to follow from the snapshot, so the whole log goes.
            db.execute("DELETE FROM entries")
            last_index = index
        db.execute(
            "INSERT OR REPLACE INTO snapshot (id, snapshot_index, term, voters, learners, data)"
            " VALUES (0, ?, ?, ?, ?, ?)",
            row,
        )
        return last_index
