"""Tenants' caps on running tasks: how many of a tenant's tasks run at once, across the cluster.

Role: the ``running_tasks`` quota of protocols/tenants.py, as the dispatch enforces it. A cap is
not a refusal: a capped tenant's ready tasks wait in the queue and are dispatched as its running
ones finish, while everyone else's go on. Two halves, both pure:

* ``TenantCaps``, the dispatch's (protocols/dispatch.py): which tasks of each capped tenant hold
  a slot, that is are dispatched or running as the log says and their report has not come; the
  room each tenant has (``allowance``), handed to the queue with each round; ``admit``, the
  last word when a round's placements come back (a task of a tenant at its cap is not sent).
* ``CappedQueues``, the queue's (protocols/rounds.py ``QueueService``): each capped tenant's
  ready tasks in a queue of its own beside the main one, all in one order (one FIFO count), so
  that a round lends from the main queue and from the queues of tenants with room, at most
  their room each, merged in the queues' order: a tenant at its cap costs a round nothing,
  however many tasks it has queued.

Rules:

* A task is its workflow's tenant's: the part of the workflow id before ``:`` (protocols/tenants.py
  ``prefix``), when a capped tenant has that name; an operator's workflow named under a
  tenant's prefix is that tenant's, as it is for the tenant's other quotas.
* The caps come in as an event (``RunningCaps``: when the quotas load or reload); nothing here
  reads a file. A lowered cap stops nothing that runs: new dispatches wait until the tenant is
  under it.
* No caps, no work: the dispatch and the queue keep no count and route nothing when no tenant is
  capped (the dispatch holds None instead of a ``TenantCaps``).
"""

from __future__ import annotations

import heapq
from typing import Iterable

from protocols.queue import PriorityTaskQueue, QueueEntry, QueueStats, order_key
from protocols.tenants import SEPARATOR


def tenant_of(key: str) -> str | None:
    """The tenant whose prefix a task key (``workflow/task``) or workflow id carries, or None."""
    head, separator, _ = key.partition(SEPARATOR)
    return head if separator and "/" not in head else None


class TenantCaps:
    """The dispatch's count of each capped tenant's tasks that hold a slot; see the module
    docstring. ``holding``: the task keys counted now (dispatched or running, not reported)."""

    def __init__(self, caps: dict[str, int], holding: Iterable[str] = ()) -> None:
        self.caps = dict(sorted(caps.items()))
        self.holding: dict[str, set[str]] = {tenant: set() for tenant in self.caps}
        for key in holding:
            self.add(key)

    def add(self, key: str) -> None:
        """Count a task that holds a slot already (a previous leader's dispatch, rebuilt), over the cap or not."""
        held = self.holding.get(tenant_of(key))
        if held is not None:
            held.add(key)

    def admit(self, key: str) -> bool:
        """Count a task about to be dispatched if its tenant has room (or no cap); False if not."""
        tenant = tenant_of(key)
        held = self.holding.get(tenant)
        if held is None or key in held:
            return True
        if len(held) >= self.caps[tenant]:
            return False
        held.add(key)
        return True

    def discard(self, key: str) -> None:
        """A task no longer holds a slot (reported, finished, requeued, cancelled, refused)."""
        held = self.holding.get(tenant_of(key))
        if held is not None:
            held.discard(key)

    def allowance(self) -> dict[str, int]:
        """How many more tasks each capped tenant may start now."""
        return {tenant: max(0, cap - len(self.holding[tenant])) for tenant, cap in self.caps.items()}

    def within(self, items: list) -> list:
        """``items`` (Queued, in order) without those beyond their tenant's allowance."""
        room = self.allowance()
        kept = []
        for item in items:
            tenant = tenant_of(item.candidate.key)
            if tenant in room:
                if room[tenant] <= 0:
                    continue
                room[tenant] -= 1
            kept.append(item)
        return kept


class CappedQueues:
    """The queue's side: each capped tenant's ready tasks in a ``PriorityTaskQueue`` of its
    own beside ``main``, in ``main``'s FIFO count (see the module docstring)."""

    def __init__(self, main: PriorityTaskQueue) -> None:
        self.main = main
        self.queues: dict[str, PriorityTaskQueue] = {}  # capped tenant -> its ready tasks

    def __len__(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    def of(self, key: str) -> PriorityTaskQueue:
        """The queue ``key`` belongs in: its tenant's if capped, else the main one."""
        return self.queues.get(tenant_of(key), self.main) if self.queues else self.main

    def enqueue(self, item) -> None:
        """Queue a ``Queued`` item where it belongs."""
        key = item.candidate.key
        queue = self.of(key)
        seq = None if queue is self.main else self.main.next_seq()
        queue.enqueue(item.candidate, item.priority, item.now_ms, retries=item.retries, key=key, seq=seq)

    def cap(self, tenants: list[str]) -> None:
        """These tenants (and no others) are capped now: move their entries into queues of
        their own, and the entries of those no longer capped back into the main one."""
        for tenant in [tenant for tenant in self.queues if tenant not in tenants]:
            for entry in self.queues.pop(tenant).take_out(lambda key: True):
                self.main.restore(entry)
        added = [tenant for tenant in tenants if tenant not in self.queues]
        for tenant in added:
            self.queues[tenant] = PriorityTaskQueue(self.main.aging_ms_per_point)
        if added:
            joining = set(added)
            for entry in self.main.take_out(lambda key: tenant_of(key) in joining):
                self.queues[tenant_of(entry.key)].restore(entry)

    def lend(self, count: int, allowance: dict[str, int]) -> tuple[list[QueueEntry], list[str]]:
        """Up to ``count`` entries in the queues' merged order, at most ``allowance[tenant]``
        (0 when absent) from each capped tenant's; and the tenants left without room (what
        their queues hold stays back: ``held``)."""
        aging = self.main.aging_ms_per_point
        sources = [self.main, *self.queues.values()]
        room = [count, *(allowance.get(tenant, 0) for tenant in self.queues)]
        heads: list[tuple[int, int, int]] = []

        def push_head(index: int) -> None:
            entry = sources[index].peek_entry()
            if entry is not None:
                heapq.heappush(heads, (order_key(entry.base_priority, entry.enqueued_ms, entry.retries, aging),
                                       entry.seq, index))

        for index in range(len(sources)):
            if room[index] > 0:
                push_head(index)
        lent: list[QueueEntry] = []
        while heads and len(lent) < count:
            index = heapq.heappop(heads)[2]
            lent.append(sources[index].dequeue_entry())
            room[index] -= 1
            if room[index] > 0:
                push_head(index)
        full = [tenant for tenant, left in zip(self.queues, room[1:]) if left <= 0]
        return lent, full

    def held(self, full: list[str]) -> int:
        """How many entries the queues of these tenants (without room) hold."""
        return sum(len(self.queues[tenant]) for tenant in full)

    def stats(self, now_ms: int) -> QueueStats:
        """The main queue's stats with the capped tenants' entries counted in."""
        stats = self.main.stats(now_ms)
        by_priority, total = dict(stats.by_priority), stats.total
        oldest_wait_ms, oldest_key = stats.oldest_wait_ms, stats.oldest_key
        for queue in self.queues.values():
            part = queue.stats(now_ms)
            total += part.total
            for name, count in part.by_priority.items():
                by_priority[name] = by_priority.get(name, 0) + count
            if part.total and (oldest_key is None or part.oldest_wait_ms > oldest_wait_ms):
                oldest_wait_ms, oldest_key = part.oldest_wait_ms, part.oldest_key
        return QueueStats(total, by_priority, oldest_wait_ms, oldest_key)
