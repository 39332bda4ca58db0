"""The conversation of a dispatch round: what the scheduler asks of the queue and the registry.

Role: the messages the SchedulerActor exchanges with the QueueActor and the RegistryActor, and
the pure services behind those two actors: ``QueueService`` (owns the ``PriorityTaskQueue``)
and ``RegistryService`` (owns the ``WorkerRegistry``), and what a round carries on the
scheduler's side (``DispatchRound``). The scheduler's side is protocols/dispatch.py;
tests/dispatchsim.py wires the three together without actors.

Rules:

* Star-shaped and batched: the scheduler is the only client of both services. It sends each
  at most one request per batch of messages it handles, carrying every update of that batch
  (enqueue, remove, release, heartbeats, ...), never one message per task. A request gets one
  reply when it asks a question (``take``, ``place``, stats, fit checks, the workers' table);
  a registry request gets one whenever the free capacity may have changed in a way the
  scheduler cannot count itself (anything but releases and claims: it adds a slot per release).
* A request's parts are applied in a fixed order (the order of the fields below), so one
  request can settle the last round and open the next.
* A round: the queue *lends* the top ``take_count`` candidates (its own, merged in queue order
  with the round's ``transient`` ones: tasks that reports on their way to the log will make
  ready); the registry places them in that order, each on the best worker it fits now, and
  stops when no slot is left; the loan is then settled: the keys in ``settle_return`` (not
  placed, still wanted) go back in their place (same score and FIFO position), the rest of it
  leaves. Transient candidates never go back (the log makes them ready and the scheduler
  enqueues them then). A capped tenant's candidates (``capped``) are kept in a queue of their
  own and lent at most ``allowance[tenant]`` a take (protocols/tenant_caps.py); ``held`` says
  how many of them stay back for want of room.
* Nothing here reads a clock: times come in requests.
* These messages never leave the process (plain classes, not wire records).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from protocols.workflow_spec import priority_name
from protocols.queue import DEFAULT_AGING_MS_PER_POINT, PriorityTaskQueue, QueueEntry, QueueStats
from protocols.registry import HealthCheckConfig, PlacementError, TaskRequirements, WorkerRegistry
from protocols.tenant_caps import CappedQueues
from protocols.workflow_run import TaskState


@dataclass(slots=True)
class Candidate:
    """A ready task as the queue keeps it and the registry places it. ``prefer``: the workers
    where its inputs are (data locality), best first."""

    key: str
    requirements: TaskRequirements
    prefer: tuple = ()


@dataclass(slots=True)
class Queued:
    """A candidate to queue with its priority, the time it became ready and its failures."""

    candidate: Candidate
    priority: int
    now_ms: int
    retries: int = 0


@dataclass(slots=True)
class DispatchRound:
    """What one dispatch round carries: the reports' commands waiting to be proposed with the
    round's dispatches, the answers owed once they commit, and the transient candidates."""

    round_id: int = 0
    now_ms: int = 0
    commands: list = field(default_factory=list)
    answers: list = field(default_factory=list)
    transient: dict = field(default_factory=dict)  # key -> Queued
    finishing: dict = field(default_factory=dict)  # workflow id -> {task id: (result, worker id)}
    unblocked: dict = field(default_factory=dict)  # workflow id -> {task id: its dependencies in finishing}
    offered: int = 0
    candidates: list = field(default_factory=list)
    direct: bool = False  # placed without the queue (it was empty)

    def unblock(self, graph, task_id: str, result, worker_id: str) -> list[str]:
        """A completion of ``task_id`` (in ``graph``) this round carries: the dependents whose
        every dependency it now carries (none if it carries this one already)."""
        finishing = self.finishing.setdefault(graph.workflow_id, {})
        if task_id in finishing:
            return []  # reported twice in one round
        finishing[task_id] = (result, worker_id)
        # Counted, not rescanned: a join of n tasks costs O(1) per completion, not O(n).
        unblocked = self.unblocked.setdefault(graph.workflow_id, {})
        runs, ready = graph.runs, []
        for child in graph.dependents.get(task_id, ()):
            if runs[child].state is TaskState.PENDING:
                unblocked[child] = unblocked.get(child, 0) + 1
                if unblocked[child] == graph.waiting_on(child):
                    ready.append(child)
        return ready


# --------------------------------------------------------------------------- the queue


@dataclass(slots=True)
class QueueRequest:
    added_through: int = 0  # the items this and every earlier request added (the scheduler's count), echoed
    reset: bool = False  # forget everything first (a new leader)
    capped: list | None = None  # the tenants capped now (protocols/tenant_caps.py), when that changed
    settle_round: int = 0  # close this round's loan: ``settle_return`` go back, the rest leaves
    settle_return: list = field(default_factory=list)
    remove: list = field(default_factory=list)  # keys no longer ready
    enqueue: list = field(default_factory=list)  # Queued items
    reprioritize: list = field(default_factory=list)  # (key, priority) pairs
    take_round: int = 0  # lend candidates for this round
    take_count: int = 0
    allowance: dict | None = None  # capped tenant -> how many of its tasks the take may lend
    transient: list = field(default_factory=list)  # Queued items considered in this round only
    stats_token: int = 0  # answer with the queue's stats at ``now_ms``
    now_ms: int = 0


@dataclass(slots=True)
class QueueReply:
    added_through: int = 0  # the request's: its depth covers every request up to it
    take_round: int = 0
    candidates: list = field(default_factory=list)  # Candidate, in queue order
    depth: int = 0  # items queued after the take (the loan excluded)
    held: int = 0  # of those, the capped tenants' that the take could not lend (no room)
    stats_token: int = 0
    stats: dict | None = None  # `agentflow queue --json`: total, by_priority, oldest_wait_ms, oldest_task


class QueueDepthBound:
    """The scheduler's upper bound on the queue's depth: the queue's last answer, plus what the
    requests after the one answered add (enqueued or given back). Replies may cross requests
    sent since: each echoes how many items had been added up to its request. Exact when
    nothing was removed, so 0 means nothing is queued."""

    def __init__(self) -> None:
        self.added = 0  # items every request so far added
        self.depth = 0  # the queue's last answer ...
        self.answered = 0  # ... once this many had been added

    def reset(self) -> None:
        """The next request resets the queue (a new leader)."""
        self.added += 1  # so that every answer from before the reset counts fewer
        self.depth, self.answered = 0, self.added

    def sent(self, request: QueueRequest) -> None:
        self.added += len(request.enqueue) + len(request.settle_return)
        request.added_through = self.added

    def replied(self, reply: QueueReply) -> None:
        if reply.added_through >= self.answered:
            self.depth, self.answered = reply.depth, reply.added_through

    def bound(self, building: QueueRequest | None) -> int:
        pending = len(building.enqueue) + len(building.settle_return) if building is not None else 0
        return self.depth + self.added - self.answered + pending


class QueueService:
    """The queue's side of the conversation (the QueueActor is a shell around it)."""

    def __init__(self, aging_ms_per_point: int = DEFAULT_AGING_MS_PER_POINT) -> None:
        self._aging = aging_ms_per_point
        self.queue = PriorityTaskQueue(aging_ms_per_point)
        self.capped = CappedQueues(self.queue)  # capped tenants' tasks, beside the queue
        self._loan_round = 0
        self._loans: dict[str, QueueEntry] = {}  # key -> entry lent to the round in flight
        self._transient: set[str] = set()  # keys of the loan that were transient

    def handle(self, request: QueueRequest) -> QueueReply | None:
        queue = self.queue
        if request.reset:
            queue = self.queue = PriorityTaskQueue(self._aging)
            self.capped = CappedQueues(queue)
            self._loans.clear()
            self._transient.clear()
        capped = self.capped
        if request.capped is not None:
            capped.cap(request.capped)
        if request.settle_round and request.settle_round == self._loan_round:
            self._settle(request.settle_return)
        for key in request.remove:  # (without capped tenants, ``of`` is the main queue at once)
            if not capped.of(key).remove(key):
                self._loans.pop(key, None)  # lent right now: it will not come back
        for item in request.enqueue:
            self._loans.pop(item.candidate.key, None)  # queued again: the new entry wins
            capped.enqueue(item)
        for key, priority in request.reprioritize:
            if not capped.of(key).reprioritize(key, priority) and key in self._loans:
                old = self._loans[key]
                self._loans[key] = QueueEntry(key, old.item, int(priority), old.enqueued_ms, old.retries, old.seq)
        reply = None
        if request.take_round:
            reply = QueueReply(request.added_through, request.take_round)
            reply.candidates, reply.held = self._lend(request)
        if request.stats_token:
            reply = reply or QueueReply(request.added_through)
            reply.stats_token = request.stats_token
            stats = self.stats(request.now_ms)
            reply.stats = {"total": stats.total, "by_priority": dict(stats.by_priority),
                           "oldest_wait_ms": stats.oldest_wait_ms, "oldest_task": stats.oldest_key}
        if reply is not None:
            reply.depth = len(queue) + len(capped)
        return reply

    def _lend(self, request: QueueRequest) -> tuple[list[Candidate], int]:
        """The round's candidates, and how many queued entries of capped tenants stay back."""
        if self._loans:
            self._settle(self._loans)  # an unsettled loan (its round was abandoned) goes back whole
        capped = self.capped
        self._loan_round = request.take_round
        for item in request.transient:
            key = item.candidate.key
            if key not in capped.of(key):
                capped.enqueue(item)
                self._transient.add(key)
        lent: list[Candidate] = []
        full: list[str] = []
        if capped.queues:
            entries, full = capped.lend(request.take_count, request.allowance or {})
            for entry in entries:
                self._loans[entry.key] = entry
                lent.append(entry.item)
        else:
            queue = self.queue
            for _ in range(request.take_count):
                entry = queue.dequeue_entry()
                if entry is None:
                    break
                self._loans[entry.key] = entry
                lent.append(entry.item)
        for key in [key for key in self._transient if key not in self._loans]:  # not lent: gone
            capped.of(key).remove(key)
            self._transient.discard(key)
        return lent, capped.held(full) if full else 0

    def _settle(self, returning) -> None:
        for key in returning:
            entry = self._loans.get(key)
            if entry is not None and key not in self._transient:
                self.capped.of(key).restore(entry)
        self._loans.clear()
        self._transient.clear()
        self._loan_round = 0

    def stats(self, now_ms: int) -> QueueStats:
        """The queue's stats, the candidates out on loan included (they are still queued)."""
        stats = self.capped.stats(now_ms)
        by_priority = dict(stats.by_priority)
        oldest_ms, oldest_key = (now_ms - stats.oldest_wait_ms, stats.oldest_key) if stats.total else (None, None)
        total = stats.total
        for key, entry in self._loans.items():
            if key in self._transient:
                continue
            total += 1
            name = priority_name(entry.base_priority)
            by_priority[name] = by_priority.get(name, 0) + 1
            if oldest_ms is None or entry.enqueued_ms < oldest_ms:
                oldest_ms, oldest_key = entry.enqueued_ms, key
        return QueueStats(total, by_priority, max(0, now_ms - oldest_ms) if oldest_ms is not None else 0, oldest_key)


# --------------------------------------------------------------------------- the registry


@dataclass(slots=True)
class Placement:
    key: str
    worker_id: str
    gpus: list


@dataclass(slots=True)
class RegistryRequest:
    """Applied in the order of its fields; answered (``RegistryReply``) unless it carries only
    releases and claims."""

    reset: bool = False  # forget every worker first (a new leader)
    now_ms: int = 0
    hellos: list = field(default_factory=list)  # WorkerInfo
    heartbeats: list = field(default_factory=list)  # (worker_id, load, draining)
    goodbyes: list = field(default_factory=list)  # worker ids
    releases: list = field(default_factory=list)  # (worker_id, key); worker_id "" = wherever it is held
    # key -> (worker_id, requirements): runs workers hold (a later release in the same request
    # drops its key's claim: a heartbeat that left before a report still lists the run it ends)
    claims: dict = field(default_factory=dict)
    check_health: bool = False  # mark offline the workers that missed their heartbeats
    fit_token: int = 0  # answer, for each of ``fit_checks``, why no worker could ever run it
    fit_checks: list = field(default_factory=list)  # TaskRequirements
    place_round: int = 0  # place ``place`` (Candidate, in order) and answer where
    place: list = field(default_factory=list)
    table_token: int = 0  # answer with the workers' table

    @property
    def answered(self) -> bool:
        """Whether the registry answers it: anything but releases and claims (the scheduler
        counts those itself)."""
        return bool(self.reset or self.hellos or self.heartbeats or self.goodbyes or self.check_health
                    or self.fit_token or self.place_round or self.table_token)


@dataclass(slots=True)
class RegistryReply:
    now_ms: int = 0  # the request's
    free_slots: int = 0  # slots free now on the workers that take work
    lost: list = field(default_factory=list)  # workers that went offline with this request
    place_round: int = 0
    placed: list = field(default_factory=list)  # Placement, in the order placed
    unplaced: list = field(default_factory=list)  # keys that fit nowhere now
    fit_token: int = 0
    fit_problems: list = field(default_factory=list)  # None (fits somewhere) or the reason
    table_token: int = 0
    table: list = field(default_factory=list)


class RegistryService:
    """The registry's side of the conversation (the RegistryActor is a shell around it)."""

    def __init__(self, health: HealthCheckConfig | None = None) -> None:
        self.health = health or HealthCheckConfig()
        self.registry = WorkerRegistry(self.health)

    def handle(self, request: RegistryRequest) -> RegistryReply | None:
        if request.reset:
            self.registry = WorkerRegistry(self.health)
        registry = self.registry
        now_ms = request.now_ms
        reply = RegistryReply(now_ms)
        for info in request.hellos:
            registry.register(info, now_ms)
        for worker_id, load, draining in request.heartbeats:
            if registry.update_heartbeat(worker_id, now_ms, load) and draining:
                registry.set_worker_status(worker_id, "draining")
        for worker_id, key in request.releases:
            registry.release(worker_id or registry.holder_of(key) or "", key)
        for worker_id in request.goodbyes:
            registry.unregister(worker_id)
        for key, (worker_id, requirements) in request.claims.items():
            try:
                registry.reserve(worker_id, key, requirements)
            except PlacementError:
                pass  # its resources changed since; the run goes on anyway
        if request.check_health:
            reply.lost = registry.check_health(now_ms)
        if request.fit_token:
            reply.fit_token = request.fit_token
            reply.fit_problems = [registry.could_ever_fit(requirements) for requirements in request.fit_checks]
        if request.place_round:
            reply.place_round = request.place_round
            self._place(request.place, reply)
        if request.table_token:
            reply.table_token = request.table_token
            reply.table = workers_table(registry)
        if not request.answered:
            return None  # releases and claims only: nothing the scheduler does not know
        reply.free_slots = registry.free_slot_count()
        return reply

    def _place(self, candidates: list[Candidate], reply: RegistryReply) -> None:
        registry = self.registry
        free = registry.free_slot_count()
        for candidate in candidates:
            if free <= 0:
                reply.unplaced.append(candidate.key)
                continue
            worker_id = registry.select(candidate.requirements, prefer=candidate.prefer)
            if worker_id is None:
                reply.unplaced.append(candidate.key)
                continue
            try:
                gpus = registry.reserve(worker_id, candidate.key, candidate.requirements)
            except PlacementError:
                reply.unplaced.append(candidate.key)
                continue
            reply.placed.append(Placement(candidate.key, worker_id, gpus))
            free -= 1


def workers_table(registry: WorkerRegistry) -> list[dict]:
    """The rows of `agentflow workers --json` (docs/ARCHITECTURE.md §4)."""
    rows = []
    for worker_id, entry in registry.workers.items():
        resources = entry.info.resources
        rows.append({
            "worker_id": worker_id,
            "status": entry.status.value,
            "group": entry.info.group,
            "resources": {"cpu_cores": resources.cpu_cores, "memory_mb": resources.memory_mb,
                          "memory_available_mb": resources.memory_available_mb,
                          "gpu_count": resources.gpu_count, "free_gpus": list(entry.free_gpus)},
            "running": entry.running,
            "max_concurrent_tasks": entry.info.max_concurrent_tasks,
            "capabilities": list(entry.info.capabilities),
            "address": entry.info.address,
            "load": dict(entry.load),
            "memory_pressure": entry.under_memory_pressure,
        })
    return rows

