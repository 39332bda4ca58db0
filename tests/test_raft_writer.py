"""The background writer of a Raft node's SQLite store (runtime/storage.py ``StorageWriter``): it
writes submitted batches in order, reports each durable batch, lets the owner's own writes wait
for it, and keeps a failing batch until the disk takes it."""

from __future__ import annotations

import queue
import threading
from collections import namedtuple

import pytest

from runtime.storage import RaftStorage, StorageError, StorageWriter
from tests.procs import wait_for

Entry = namedtuple("Entry", "term index kind data")
HardState = namedtuple("HardState", "term vote commit")


def entries(first, last, term=1):
    return [Entry(term, index, 0, b"e%d" % index) for index in range(first, last + 1)]


class Reports:
    def __init__(self) -> None:
        self.written: queue.Queue = queue.Queue()
        self.failed: queue.Queue = queue.Queue()


@pytest.fixture
def store(tmp_path):
    with RaftStorage(tmp_path / "raft.sqlite") as storage:
        yield storage


def start_writer(storage):
    reports = Reports()
    writer = StorageWriter(storage, lambda index, term: reports.written.put((index, term)), reports.failed.put)
    return writer, reports


def test_batches_are_written_in_order_and_each_write_is_reported(store):
    writer, reports = start_writer(store)
    try:
        for first in range(1, 100, 10):
            writer.submit(HardState(1, None, first - 1), entries(first, first + 9))
        last = None
        while last != (100, 1):
            last = reports.written.get(timeout=10)  # several batches may share one transaction
        writer.save_now()  # returns once nothing is queued
        stored = store.load()
        assert [e.index for e in stored.entries] == list(range(1, 101))
        assert stored.hard_state.commit == 90
    finally:
        writer.close()


def test_the_owners_own_write_waits_for_what_was_submitted(store):
    writer, _ = start_writer(store)
    try:
        writer.submit(HardState(1, None, 0), entries(1, 5))
        # Another leader's entries overwrite index 4 on: they must land after the batch above.
        writer.save_now(HardState(2, "n2", 3), entries(4, 6, term=2))
        assert [(e.index, e.term) for e in store.load().entries] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    finally:
        writer.close()


class FlakyStorage:
    """A RaftStorage whose writes fail while ``broken`` is set, as a full or read-only disk does."""

    def __init__(self, storage: RaftStorage) -> None:
        self.storage, self.path = storage, storage.path
        self.broken = threading.Event()

    def save(self, *args) -> None:
        if self.broken.is_set():
            raise StorageError(f"{self.path}: cannot write the Raft store (database or disk is full)")
        self.storage.save(*args)


def test_a_failing_write_is_reported_once_kept_and_retried_until_the_disk_takes_it(store):
    flaky = FlakyStorage(store)
    flaky.broken.set()
    writer, reports = start_writer(flaky)
    try:
        writer.submit(HardState(1, None, 0), entries(1, 3))
        assert "disk is full" in reports.failed.get(timeout=10)
        writer.submit(HardState(1, None, 2), entries(4, 4))
        wait_for(lambda: writer.failure is not None, 10, what="the writer to say it is failing")
        with pytest.raises(StorageError, match="disk is full"):
            writer.save_now(HardState(2, None, 2))  # the owner's own write must not jump the queue
        assert store.load().entries == [] and reports.written.empty()
        flaky.broken.clear()
        assert reports.written.get(timeout=10) == (4, 1)  # both batches, in one retry
        assert writer.failure is None and reports.failed.empty()
        assert [e.index for e in store.load().entries] == [1, 2, 3, 4]
    finally:
        writer.close()


def test_close_gives_up_on_a_disk_that_keeps_failing(store):
    flaky = FlakyStorage(store)
    flaky.broken.set()
    writer, reports = start_writer(flaky)
    writer.submit(HardState(1, None, 0), entries(1, 1))
    reports.failed.get(timeout=10)
    writer.close(timeout_s=5)
    assert not writer._thread.is_alive()
