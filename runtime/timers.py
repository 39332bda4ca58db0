"""The node's timers: a heap of due times, run by the transport thread (nothing sleeps in a loop).

Rules: a periodic timer that fell behind (a stalled thread) skips the periods it missed instead
of firing a burst; a cancelled timer never fires again.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any


class TimerQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, tuple[float | None, Any, str]]] = []
        self._ids = itertools.count(1)
        self._cancelled: set[int] = set()

    def new_id(self) -> int:
        return next(self._ids)

    def add(self, timer_id: int, first_due: float, interval_s: float | None, target: Any, name: str) -> None:
        heapq.heappush(self._heap, (first_due, timer_id, (interval_s, target, name)))

    def cancel(self, timer_id: int) -> None:
        self._cancelled.add(timer_id)

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[Any, str]]:
        """(target, timer name) for each timer due at ``now``; periodic ones are rescheduled."""
        due_now = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, timer_id, (interval_s, target, name) = heapq.heappop(heap)
            if timer_id in self._cancelled:
                self._cancelled.discard(timer_id)
                continue
            due_now.append((target, name))
            if interval_s is not None:
                next_due = due + interval_s
                heapq.heappush(heap, (next_due if next_due > now else now + interval_s, timer_id,
                                      (interval_s, target, name)))
        return due_now
