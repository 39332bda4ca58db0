"""The priority queue of ready tasks: priorities, FIFO within a priority, aging, retry penalty.

Rules of this module:

* It is pure and deterministic: time comes in as ``now_ms``; equal scores are broken by the
  enqueue sequence number, so every master that applies the same operations pops the same order.
* The effective score of a queued item at time ``now_ms`` is::

      score = base_priority + (now_ms - enqueued_ms) / aging_ms_per_point - RETRY_PENALTY * retries

  Waiting raises an item's score (aging: nothing starves), retrying lowers it (a task that keeps
  failing does not crowd out fresh work). With the default ``aging_ms_per_point = 100`` an item
  gains 10 points a second: a ``low`` (250) item that waited 50 s ties a fresh ``high`` (750) one
  and wins on age after that; after 75 s it passes a fresh ``urgent``. One retry costs 50 points,
  the same as 5 s of waiting.
* The highest score pops first; among equal scores, the earlier enqueue. Base priorities:
  urgent 1000, high 750, medium 500, low 250, or any integer.
* Because aging is linear and the same for every item, the order between two queued items never
  changes with time: ``score * k = base * k - RETRY_PENALTY * retries * k - enqueued_ms + now_ms``,
  and ``now_ms`` is common to all. So one heap keyed on the time-free part is exact, and pops stay
  O(log n). ``remove`` and ``reprioritize`` mark heap entries stale (lazy deletion); the heap is
  rebuilt when stale entries outnumber live ones.
* Keys are unique: enqueuing a key that is already queued replaces the old entry (it moves to the
  back of its new priority). Items are anything msgpack-native or a wire record.
"""

from __future__ import annotations

import heapq
from dataclasses import field
from typing import Any, Callable

from protocols.workflow_spec import TaskPriority, priority_name, priority_value
from protocols.wire import record

RETRY_PENALTY = 50
DEFAULT_AGING_MS_PER_POINT = 100


@record("queue.entry")
class QueueEntry:
    """One queued item, as it is kept and as it goes into a snapshot."""

    key: str
    item: Any
    base_priority: int
    enqueued_ms: int
    retries: int
    seq: int


@record("queue.stats")
class QueueStats:
    """``by_priority`` counts items per base priority name (``"high"``, or ``"600"`` for an
    unnamed integer); ``oldest_wait_ms`` is how long the longest-waiting item has waited."""

    total: int
    by_priority: dict = field(default_factory=dict)
    oldest_wait_ms: int = 0
    oldest_key: str | None = None


def order_key(base_priority: int, enqueued_ms: int, retries: int, aging_ms_per_point: int) -> int:
    """Smaller pops first: -(score * aging_ms_per_point) without the common ``now_ms`` term."""
    return enqueued_ms - (base_priority - RETRY_PENALTY * retries) * aging_ms_per_point


def _default_key(item: Any) -> str:
    if isinstance(item, str):
        return item
    key = getattr(item, "task_key", None) or getattr(item, "key", None)
    if not isinstance(key, str):
        raise TypeError("pass key= for items that are not strings and have no task_key")
    return key


class PriorityTaskQueue:
    """A priority queue with aging and a retry penalty. See the module docstring."""

    def __init__(self, aging_ms_per_point: int = DEFAULT_AGING_MS_PER_POINT) -> None:
        if aging_ms_per_point <= 0:
            raise ValueError("aging_ms_per_point must be positive")
        self.aging_ms_per_point = int(aging_ms_per_point)
        self._entries: dict[str, QueueEntry] = {}  # key -> live entry, in enqueue order
        # Heap of (order_key, seq, push_id, key). seq is the enqueue order (the tie-break);
        # push_id tells a key's current heap entry from the stale ones left by reprioritize.
        self._heap: list[tuple[int, int, int, str]] = []
        self._live_push: dict[str, int] = {}
        self._next_seq = 0
        self._next_push = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    # ----------------------------------------------------------------- scores

    def _order_key(self, base_priority: int, enqueued_ms: int, retries: int) -> int:
        return order_key(base_priority, enqueued_ms, retries, self.aging_ms_per_point)

    def effective_score(self, entry: QueueEntry, now_ms: int) -> float:
        """The entry's score at ``now_ms`` (for display and tests; ordering never needs it)."""
        waited_ms = now_ms - entry.enqueued_ms
        return entry.base_priority + waited_ms / self.aging_ms_per_point - RETRY_PENALTY * entry.retries

    # ----------------------------------------------------------------- operations

    def enqueue(
        self, item: Any, priority: str | int, now_ms: int, *, retries: int = 0, key: str | None = None,
        seq: int | None = None,
    ) -> QueueEntry:
        """Queue ``item`` (its key is ``key``, else the item itself if it is a str, else its
        ``task_key``). ``retries`` is how many times it already failed. ``seq``: its place in
        the FIFO order of another queue (``next_seq``), for queues merged in one order."""
        key = key if key is not None else _default_key(item)
        base_priority = priority_value(priority)
        if seq is None:
            seq = self._next_seq
            self._next_seq += 1
        entry = QueueEntry(key, item, base_priority, now_ms, retries, seq)
        self._entries.pop(key, None)  # replaced: re-inserting moves it to the end of the dict
        self._entries[key] = entry
        self._push(entry)
        self._compact_if_stale()
        return entry

    def dequeue(self, now_ms: int | None = None) -> Any | None:
        """Pop the item with the highest effective score, or None if empty. (``now_ms`` is
        accepted for symmetry; the order does not depend on it.)"""
        entry = self.dequeue_entry()
        return entry.item if entry is not None else None

    def dequeue_entry(self) -> QueueEntry | None:
        self._drop_stale_top()
        if not self._heap:
            return None
        key = heapq.heappop(self._heap)[3]
        del self._live_push[key]
        return self._entries.pop(key)

    def dequeue_batch(
        self,
        n: int,
        now_ms: int | None = None,
        accept: Callable[[Any], bool] | None = None,
        max_scanned: int | None = None,
        drop: Callable[[Any], bool] | None = None,
    ) -> list[Any]:
        """Pop up to ``n`` items in queue order, skipping the ones ``accept`` rejects (they stay
        queued, in their place). ``accept`` may have side effects (the scheduler reserves a
        worker in it). Looks at no more than ``max_scanned`` items when given, so that a queue
        full of tasks nobody can place right now does not cost a full scan per call. Items
        ``drop`` names (no longer wanted) are removed on the way, not returned, and count
        toward neither ``n`` nor ``max_scanned``: each costs one look, once."""
        taken: list[Any] = []
        skipped: list[tuple[int, int, int, str]] = []
        scanned = 0
        while len(taken) < n and (max_scanned is None or scanned < max_scanned):
            self._drop_stale_top()
            if not self._heap:
                break
            top = heapq.heappop(self._heap)
            entry = self._entries[top[3]]
            if drop is not None and drop(entry.item):
                del self._entries[entry.key]
                del self._live_push[entry.key]
                continue
            scanned += 1
            if accept is None or accept(entry.item):
                del self._entries[entry.key]
                del self._live_push[entry.key]
                taken.append(entry.item)
            else:
                skipped.append(top)
        for heap_item in skipped:
            heapq.heappush(self._heap, heap_item)
        return taken

    def restore(self, entry: QueueEntry) -> None:
        """Put back an entry that ``dequeue_entry`` took, as it was: same score and the same
        FIFO place among equals (its sequence number). A key queued again meanwhile wins."""
        if entry.key in self._entries:
            return
        self._entries[entry.key] = entry
        self._push(entry)

    def peek(self, now_ms: int | None = None) -> Any | None:
        """The item ``dequeue`` would return, without removing it."""
        entry = self.peek_entry()
        return entry.item if entry is not None else None

    def peek_entry(self) -> QueueEntry | None:
        self._drop_stale_top()
        return self._entries[self._heap[0][3]] if self._heap else None

    def next_seq(self) -> int:
        """Take the next place in this queue's FIFO order for an entry kept in another queue
        (``enqueue(seq=...)``): queues merged in one order share one count."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def take_out(self, belongs: Callable[[str], bool]) -> list[QueueEntry]:
        """Remove every entry whose key ``belongs`` and return them (to ``restore`` elsewhere:
        they keep their score and FIFO place). O(n): for rare moves, not the hot path."""
        taken = [entry for key, entry in self._entries.items() if belongs(key)]
        for entry in taken:
            del self._entries[entry.key]
            del self._live_push[entry.key]
        if taken:
            self._rebuild_heap()
        return taken

    def get(self, key: str) -> QueueEntry | None:
        return self._entries.get(key)

    def remove(self, key: str) -> bool:
        """Take an item out of the queue; False if it was not queued."""
        if self._entries.pop(key, None) is None:
            return False
        del self._live_push[key]
        self._compact_if_stale()
        return True

    def reprioritize(self, key: str, priority: str | int, now_ms: int | None = None) -> bool:
        """Change a queued item's base priority; it keeps its place in time (aging earned so
        far and FIFO position among equals). False if it was not queued."""
        old = self._entries.get(key)
        if old is None:
            return False
        base_priority = priority_value(priority)
        if base_priority == old.base_priority:
            return True
        entry = QueueEntry(key, old.item, base_priority, old.enqueued_ms, old.retries, old.seq)
        self._entries[key] = entry  # same key: keeps its dict position
        self._push(entry)  # the old heap entry is now stale
        self._compact_if_stale()
        return True

    def stats(self, now_ms: int) -> QueueStats:
        by_priority: dict[str, int] = {priority.name.lower(): 0 for priority in TaskPriority}
        oldest: QueueEntry | None = None
        for entry in self._entries.values():
            name = priority_name(entry.base_priority)
            by_priority[name] = by_priority.get(name, 0) + 1
            if oldest is None or entry.enqueued_ms < oldest.enqueued_ms:
                oldest = entry
        return QueueStats(
            total=len(self._entries),
            by_priority=by_priority,
            oldest_wait_ms=max(0, now_ms - oldest.enqueued_ms) if oldest else 0,
            oldest_key=oldest.key if oldest else None,
        )

    def entries(self) -> list[QueueEntry]:
        """Every queued entry in pop order (O(n log n); for views, not for the hot path)."""
        live = sorted(item for item in self._heap if self._live_push.get(item[3]) == item[2])
        return [self._entries[item[3]] for item in live]

    # ----------------------------------------------------------------- internals

    def _push(self, entry: QueueEntry) -> None:
        push_id = self._next_push
        self._next_push += 1
        self._live_push[entry.key] = push_id
        order_key = self._order_key(entry.base_priority, entry.enqueued_ms, entry.retries)
        heapq.heappush(self._heap, (order_key, entry.seq, push_id, entry.key))

    def _drop_stale_top(self) -> None:
        heap, live_push = self._heap, self._live_push
        while heap and live_push.get(heap[0][3]) != heap[0][2]:
            heapq.heappop(heap)

    def _compact_if_stale(self) -> None:
        # Stale heap entries cost memory and pop time; rebuild when they are the majority.
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._entries):
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = []
        self._live_push = {}
        self._next_push = 0
        for entry in self._entries.values():
            self._live_push[entry.key] = self._next_push
            order_key = self._order_key(entry.base_priority, entry.enqueued_ms, entry.retries)
            self._heap.append((order_key, entry.seq, self._next_push, entry.key))
            self._next_push += 1
        heapq.heapify(self._heap)

    # ----------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict:
        return {
            "aging_ms_per_point": self.aging_ms_per_point,
            "next_seq": self._next_seq,
            "entries": [
                [e.key, e.item, e.base_priority, e.enqueued_ms, e.retries, e.seq] for e in self._entries.values()
            ],
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict) -> PriorityTaskQueue:
        queue = cls(snapshot["aging_ms_per_point"])
        queue._next_seq = snapshot["next_seq"]
        for key, item, base_priority, enqueued_ms, retries, seq in snapshot["entries"]:
            queue._entries[key] = QueueEntry(key, item, base_priority, enqueued_ms, retries, seq)
        queue._rebuild_heap()
        return queue
