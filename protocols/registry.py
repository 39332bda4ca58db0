"""The worker table: membership, health, resources, and where a task may run.

Rules of this module:

* It is pure and deterministic: time comes in as ``now_ms``; workers are kept in registration
  order and every choice breaks ties by worker id, so the same inputs give the same answer.
* The scheduler keeps the table as the leader's soft state (workers register again with a new
  leader); nothing of it goes through the log.
* Health: a worker whose last heartbeat is ``max_missed_heartbeats`` intervals old (3 x 1000 ms
  by default) is marked ``offline`` by ``check_health``; its next heartbeat brings it back.
* Placement (``select``): a worker qualifies when it is ``active`` or ``busy`` with a free slot
  (never ``draining`` or ``offline``), is not under memory pressure (its last heartbeat said so:
  no new tasks until it recovers), is in the task's group (if it names one), has every
  capability the task asks for, and has the cpu, memory and GPUs free. Among those, a worker
  the task ``prefer``s (where its inputs are: data locality) wins, the first such in the given
  order; then one in the same group as the first preferred worker; then the least loaded:
  the lowest sum of its share of slots in use and its cpu load (reported, else reserved), so
  that an overloaded machine gets less even with free slots; then fewer slots in use, then
  the smaller worker id.
* Resources are reserved per task (``reserve``/``release``). Each GPU is tracked by index; the
  indices reserved for a task are handed to it (the worker sets ``CUDA_VISIBLE_DEVICES``).
  Memory is accounted against the worker's declared ``memory_mb``, not against the free memory it
  reports, which already includes what its running tasks use.
* ``busy`` is set and cleared by the registry itself (all slots taken / a slot free);
  ``draining`` and ``offline`` are only left by ``set_worker_status`` (or a heartbeat, for offline).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from enum import Enum

from protocols.wire import record

worker_log = logging.getLogger("agentflow.worker")
registry_log = logging.getLogger("agentflow.registry")


class WorkerStatus(str, Enum):
    ACTIVE = "active"
    BUSY = "busy"
    OFFLINE = "offline"
    DRAINING = "draining"


@record("registry.resources")
class WorkerResources:
    """What a worker offers. ``custom`` holds anything else it advertises (e.g. ``{"tpu": 1}``)."""

    cpu_cores: float = 1.0
    memory_mb: int = 1024
    memory_available_mb: int = 1024
    gpu_count: int = 0
    custom: dict = field(default_factory=dict)


@record("registry.worker")
class WorkerInfo:
    worker_id: str
    name: str = ""
    group: str = "default"
    platform: str = ""
    capabilities: list[str] = field(default_factory=list)
    max_concurrent_tasks: int = 4
    resources: WorkerResources = field(default_factory=WorkerResources)
    address: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkerInfo:
        values = dict(data)
        values["resources"] = WorkerResources(**values.get("resources", {}))
        return cls(**values)


@record("registry.health_config")
class HealthCheckConfig:
    heartbeat_interval_ms: int = 1000
    max_missed_heartbeats: int = 3


@record("registry.requirements")
class TaskRequirements:
    """What one task needs from its worker (``TaskNode.requirements`` builds one)."""

    cpu: float = 0.0
    memory_mb: int = 0
    gpu: int = 0
    capabilities: list[str] = field(default_factory=list)
    group: str | None = None


class PlacementError(ValueError):
    """A reservation that does not fit the worker (or names an unknown worker)."""


@dataclass
class Reservation:
    cpu: float
    memory_mb: int
    gpu_indices: list[int]


@dataclass
class WorkerEntry:
    """One worker's row: what it declared, its status, and what is reserved on it."""

    info: WorkerInfo
    status: WorkerStatus
    registered_ms: int
    last_heartbeat_ms: int
    load: dict = field(default_factory=dict)  # the last heartbeat's report, e.g. {"cpu_percent": 12.5}
    reservations: dict[str, Reservation] = field(default_factory=dict)  # task key -> reservation
    free_gpus: list[int] = field(default_factory=list)  # sorted
    # The reservations' sums, kept as they change: placement reads them for every candidate
    # worker of every task, and summing them each time cost O(slots) (a 64-slot worker: 2x).
    reserved_cpu: float = field(default=0.0, init=False)
    reserved_memory_mb: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.reserved_cpu = sum(r.cpu for r in self.reservations.values())
        self.reserved_memory_mb = sum(r.memory_mb for r in self.reservations.values())

    @property
    def running(self) -> int:
        return len(self.reservations)

    @property
    def free_slots(self) -> int:
        return self.info.max_concurrent_tasks - len(self.reservations)

    @property
    def free_cpu(self) -> float:
        return self.info.resources.cpu_cores - self.reserved_cpu

    @property
    def free_memory_mb(self) -> int:
        return self.info.resources.memory_mb - self.reserved_memory_mb

    @property
    def slot_usage(self) -> float:
        """Running tasks per slot, 0.0 to 1.0."""
        return len(self.reservations) / max(1, self.info.max_concurrent_tasks)

    @property
    def under_memory_pressure(self) -> bool:
        """The worker's last heartbeat said its available memory is below its threshold."""
        return self.load.get("memory_pressure") is True

    @property
    def load_score(self) -> float:
        """What least-loaded placement minimises: slots in use plus cpu load, each 0.0 to 1.0."""
        return self.slot_usage + self.cpu_usage

    @property
    def cpu_usage(self) -> float:
        """The reported cpu usage (0.0 to 1.0) if the worker sent one, else the reserved share."""
        reported = self.load.get("cpu_percent")
        if isinstance(reported, (int, float)) and not isinstance(reported, bool):
            return float(reported) / 100.0
        cores = self.info.resources.cpu_cores
        return (cores - self.free_cpu) / cores if cores > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "info": self.info.to_dict(),
            "status": self.status.value,
            "registered_ms": self.registered_ms,
            "last_heartbeat_ms": self.last_heartbeat_ms,
            "load": dict(self.load),
            "reservations": {key: dataclasses.asdict(r) for key, r in self.reservations.items()},
            "free_gpus": list(self.free_gpus),
        }

    @classmethod
    def from_dict(cls, data: dict) -> WorkerEntry:
        return cls(
            info=WorkerInfo.from_dict(data["info"]),
            status=WorkerStatus(data["status"]),
            registered_ms=data["registered_ms"],
            last_heartbeat_ms=data["last_heartbeat_ms"],
            load=dict(data["load"]),
            reservations={key: Reservation(**r) for key, r in data["reservations"].items()},
            free_gpus=list(data["free_gpus"]),
        )


class WorkerRegistry:
    """The table of workers. See the module docstring for the rules."""

    def __init__(self, health: HealthCheckConfig | None = None) -> None:
        self.health = health or HealthCheckConfig()
        self.workers: dict[str, WorkerEntry] = {}  # registration order
        self._holders: dict[str, str] = {}  # task key -> the worker holding its reservation

    def __len__(self) -> int:
        return len(self.workers)

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self.workers

    # ----------------------------------------------------------------- membership

    def register(self, info: WorkerInfo, now_ms: int) -> None:
        """Add a worker, or refresh a re-registering one (same id: new info, reservations kept,
        status back to active unless it was draining)."""
        entry = self.workers.get(info.worker_id)
        if entry is None:
            self.workers[info.worker_id] = WorkerEntry(
                info=info,
                status=WorkerStatus.ACTIVE,
                registered_ms=now_ms,
                last_heartbeat_ms=now_ms,
                free_gpus=list(range(info.resources.gpu_count)),
            )
            worker_log.info("Worker %s registered (%s)", info.worker_id, info.group)
            return
        in_use = sorted(i for r in entry.reservations.values() for i in r.gpu_indices)
        entry.info = info
        entry.last_heartbeat_ms = now_ms
        entry.free_gpus = [i for i in range(info.resources.gpu_count) if i not in in_use]
        if entry.status is not WorkerStatus.DRAINING:
            entry.status = WorkerStatus.ACTIVE
            self._update_busy(entry)

    def unregister(self, worker_id: str) -> list[str]:
        """Remove a worker; returns the task keys it had reserved (they need a new home)."""
        entry = self.workers.pop(worker_id, None)
        if entry is None:
            return []
        for key in entry.reservations:
            if self._holders.get(key) == worker_id:
                del self._holders[key]
        worker_log.info("Worker %s unregistered", worker_id)
        return list(entry.reservations)

    def set_worker_status(self, worker_id: str, status: WorkerStatus | str) -> bool:
        entry = self.workers.get(worker_id)
        if entry is None:
            return False
        entry.status = WorkerStatus(status)
        if entry.status is WorkerStatus.ACTIVE:
            self._update_busy(entry)
        return True

    # ----------------------------------------------------------------- health

    def update_heartbeat(self, worker_id: str, now_ms: int, load: dict | None = None) -> bool:
        """Record a heartbeat; an offline worker comes back as active. False if unknown."""
        entry = self.workers.get(worker_id)
        if entry is None:
            return False
        entry.last_heartbeat_ms = max(entry.last_heartbeat_ms, now_ms)
        if load is not None:
            was_pressed = entry.under_memory_pressure
            entry.load = dict(load)
            if entry.under_memory_pressure != was_pressed:
                if was_pressed:
                    worker_log.info("Worker %s recovered from memory pressure", worker_id)
                else:
                    worker_log.info("Worker %s under memory pressure (%s MB available): no new tasks until it "
                                    "recovers", worker_id, entry.load.get("memory_available_mb", "?"))
        if entry.status is WorkerStatus.OFFLINE:
            entry.status = WorkerStatus.ACTIVE
            self._update_busy(entry)
            worker_log.info("Worker %s is back online", worker_id)
        return True

    def check_health(self, now_ms: int) -> list[str]:
        """Mark offline every worker that missed too many heartbeats; returns those newly
        offline, in registration order (their tasks need requeueing)."""
        limit_ms = self.health.heartbeat_interval_ms * self.health.max_missed_heartbeats
        newly_offline: list[str] = []
        for worker_id, entry in self.workers.items():
            if entry.status is WorkerStatus.OFFLINE:
                continue
            if now_ms - entry.last_heartbeat_ms >= limit_ms:
                entry.status = WorkerStatus.OFFLINE
                newly_offline.append(worker_id)
                worker_log.info(
                    "Worker %s marked as unhealthy after %d failures",
                    worker_id,
                    self.health.max_missed_heartbeats,
                )
        return newly_offline

    def get_worker(self, worker_id: str) -> WorkerEntry | None:
        return self.workers.get(worker_id)

    def get_healthy_workers(self) -> list[WorkerInfo]:
        """Workers that are active or busy (not draining, not offline), in registration order."""
        return [
            entry.info
            for entry in self.workers.values()
            if entry.status in (WorkerStatus.ACTIVE, WorkerStatus.BUSY)
        ]

    def get_least_loaded_worker(self, group_name: str | None = None) -> WorkerInfo | None:
        """The healthy worker with a free slot and the lowest load, optionally within a group."""
        best = self._best(
            entry
            for entry in self.workers.values()
            if self._accepts_work(entry) and (group_name is None or entry.info.group == group_name)
        )
        return best.info if best else None

    # ----------------------------------------------------------------- placement

    def select(self, requirements: TaskRequirements, group: str | None = None,
               prefer: tuple[str, ...] | list[str] = ()) -> str | None:
        """The worker to run a task with these requirements on, or None if none fits now.
        ``prefer``: workers where the task's inputs are, best first (see the module docstring)."""
        group = group if group is not None else requirements.group
        for worker_id in prefer:
            entry = self.workers.get(worker_id)
            if entry is not None and self._fits_now(entry, requirements, group):
                registry_log.debug("Worker %s selected (where its inputs are)", worker_id)
                return worker_id
        fitting = [entry for entry in self.workers.values() if self._fits_now(entry, requirements, group)]
        if prefer and fitting and prefer[0] in self.workers:
            near_group = self.workers[prefer[0]].info.group
            near = [entry for entry in fitting if entry.info.group == near_group]
            if near:
                fitting = near
        best = self._best(fitting)
        if best is None:
            return None
        if registry_log.isEnabledFor(logging.DEBUG):
            registry_log.debug("Worker %s selected (least loaded: %d%% of slots, %d%% cpu)", best.info.worker_id,
                               round(best.slot_usage * 100), round(best.cpu_usage * 100))
        return best.info.worker_id

    def reserve(self, worker_id: str, task_key: str, requirements: TaskRequirements) -> list[int]:
        """Reserve a task's resources on a worker; returns the GPU indices given to it (the
        lowest free ones). Reserving an already reserved task returns its GPUs again."""
        entry = self.workers.get(worker_id)
        if entry is None:
            raise PlacementError(f"unknown worker {worker_id!r}")
        existing = entry.reservations.get(task_key)
        if existing is not None:
            return list(existing.gpu_indices)
        problem = self._resource_problem(entry, requirements, free=True)
        if problem:
            raise PlacementError(f"{task_key} does not fit on {worker_id}: {problem}")
        gpu_indices = entry.free_gpus[: requirements.gpu]
        entry.free_gpus = entry.free_gpus[requirements.gpu :]
        entry.reservations[task_key] = Reservation(float(requirements.cpu), requirements.memory_mb, gpu_indices)
        entry.reserved_cpu += float(requirements.cpu)
        entry.reserved_memory_mb += requirements.memory_mb
        self._holders[task_key] = worker_id
        self._update_busy(entry)
        return list(gpu_indices)

    def release(self, worker_id: str, task_key: str) -> bool:
        """Give back a task's reservation; False if there was none."""
        entry = self.workers.get(worker_id)
        if entry is None:
            return False
        reservation = entry.reservations.pop(task_key, None)
        if reservation is None:
            return False
        if entry.reservations:
            entry.reserved_cpu -= reservation.cpu
            entry.reserved_memory_mb -= reservation.memory_mb
        else:  # exactly zero again: float shares added and taken in different orders drift
            entry.reserved_cpu, entry.reserved_memory_mb = 0.0, 0
        if self._holders.get(task_key) == worker_id:
            del self._holders[task_key]
        entry.free_gpus = sorted(entry.free_gpus + reservation.gpu_indices)
        self._update_busy(entry)
        return True

    def holder_of(self, task_key: str) -> str | None:
        """The worker that reserved ``task_key`` last (the only one, unless a worker claimed a run
        that was also placed elsewhere)."""
        return self._holders.get(task_key)

    def free_slot_count(self) -> int:
        """Slots free on the workers that take work now (an over-reserved worker counts 0)."""
        return sum(max(0, entry.free_slots) for entry in self.workers.values() if self._accepts_work(entry))

    def could_ever_fit(self, requirements: TaskRequirements, group: str | None = None) -> str | None:
        """None if some registered worker (whatever its status and load) could run a task with
        these requirements; else why not, for rejecting the task at submit time."""
        group = group if group is not None else requirements.group
        if not self.workers:
            return "no worker is registered"
        problems: list[str] = []
        for worker_id, entry in self.workers.items():
            problem = self._static_problem(entry, requirements, group) or self._resource_problem(
                entry, requirements, free=False
            )
            if problem is None:
                return None
            problems.append(f"{worker_id}: {problem}")
        shown = problems[:5]
        more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        return "no registered worker can ever run it (" + "; ".join(shown) + more + ")"

    # ----------------------------------------------------------------- internals

    @staticmethod
    def _accepts_work(entry: WorkerEntry) -> bool:
        return (entry.status in (WorkerStatus.ACTIVE, WorkerStatus.BUSY) and entry.free_slots > 0
                and not entry.under_memory_pressure)

    def _fits_now(self, entry: WorkerEntry, requirements: TaskRequirements, group: str | None) -> bool:
        return (
            self._accepts_work(entry)
            and self._static_problem(entry, requirements, group) is None
            and self._resource_problem(entry, requirements, free=True) is None
        )

    @staticmethod
    def _static_problem(entry: WorkerEntry, requirements: TaskRequirements, group: str | None) -> str | None:
        if group is not None and entry.info.group != group:
            return f"in group {entry.info.group!r}, not {group!r}"
        missing = [c for c in requirements.capabilities if c not in entry.info.capabilities]
        if missing:
            return "lacks capabilities " + ", ".join(missing)
        if entry.info.max_concurrent_tasks < 1:
            return "takes no tasks"
        return None

    @staticmethod
    def _resource_problem(entry: WorkerEntry, requirements: TaskRequirements, free: bool) -> str | None:
        resources = entry.info.resources
        cpu = entry.free_cpu if free else resources.cpu_cores
        memory_mb = entry.free_memory_mb if free else resources.memory_mb
        gpus = len(entry.free_gpus) if free else resources.gpu_count
        which = "free" if free else "in all"
        # A tiny tolerance: reserved cpu shares are floats summed in different orders.
        if requirements.cpu > cpu + 1e-9:
            return f"needs {requirements.cpu:g} cpu, has {cpu:g} {which}"
        if requirements.memory_mb > memory_mb:
            return f"needs {requirements.memory_mb} MB, has {memory_mb} MB {which}"
        if requirements.gpu > gpus:
            return f"needs {requirements.gpu} GPUs, has {gpus} {which}"
        return None

    @staticmethod
    def _best(entries) -> WorkerEntry | None:
        best, best_key = None, None
        for entry in entries:
            key = (entry.load_score, entry.slot_usage, entry.info.worker_id)
            if best_key is None or key < best_key:
                best, best_key = entry, key
        return best

    @staticmethod
    def _update_busy(entry: WorkerEntry) -> None:
        if entry.status is WorkerStatus.ACTIVE and entry.free_slots <= 0:
            entry.status = WorkerStatus.BUSY
        elif entry.status is WorkerStatus.BUSY and entry.free_slots > 0:
            entry.status = WorkerStatus.ACTIVE

    # ----------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict:
        return {
            "health": dataclasses.asdict(self.health),
            "workers": [entry.to_dict() for entry in self.workers.values()],
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict) -> WorkerRegistry:
        registry = cls(HealthCheckConfig(**snapshot["health"]))
        for data in snapshot["workers"]:
            entry = WorkerEntry.from_dict(data)
            registry.workers[entry.info.worker_id] = entry
            for key in entry.reservations:
                registry._holders[key] = entry.info.worker_id
        return registry

    # The names the brief's runtime side asks for.
    snapshot = to_snapshot

    def restore(self, snapshot: dict) -> None:
        """Replace this registry's state with a snapshot's (in place, for an actor's field)."""
        restored = WorkerRegistry.from_snapshot(snapshot)
        self.health = restored.health
        self.workers = restored.workers
        self._holders = restored._holders
