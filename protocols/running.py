"""Where the leader believes each running task runs, checked against what workers say they hold.

Role: a soft index of the dispatch state (protocols/dispatch.py), kept from applied commands
(a DispatchTask puts a task on its worker; a finish, requeue, cancel or skip takes it off) and
rebuilt from the replicated table by a new leader. A worker's loss requeues what is on it;
its heartbeats are reconciled with it.

Rules: a heartbeat lists every attempt its worker holds (waiting, running, or reported and not
yet accepted). A task the index puts on a worker that two heartbeats in a row do not list was
lost on the way (a dropped assignment; a report accepted for another dispatch of the same
attempt number): it is requeued. Two, because the first may have left before the assignment
arrived.
"""

from __future__ import annotations

from protocols.workflow_spec import split_task_key

MISSING_HEARTBEATS = 2


class RunningIndex:
    def __init__(self) -> None:
        self.on_worker: dict[str, dict[str, int]] = {}  # worker -> {task key: attempt}
        self._where: dict[str, str] = {}  # task key -> worker
        self._missing: dict[str, int] = {}  # task key -> heartbeats in a row that did not list it

    def running(self, key: str, worker_id: str, attempt: int) -> None:
        self.not_running(key)
        self.on_worker.setdefault(worker_id, {})[key] = attempt
        self._where[key] = worker_id

    def not_running(self, key: str) -> None:
        worker_id = self._where.pop(key, None)
        if worker_id is None:
            return
        tasks = self.on_worker[worker_id]
        del tasks[key]
        if not tasks:
            del self.on_worker[worker_id]
        self._missing.pop(key, None)

    def tasks_on(self, worker_id: str) -> list[str]:
        return list(self.on_worker.get(worker_id, ()))

    def lost(self, worker_id: str, held: set[tuple[str, str, int]]) -> list[str]:
        """The tasks on ``worker_id`` that this heartbeat (``held``: its attempt keys) and the
        one before did not list."""
        lost = []
        for key, attempt in self.on_worker.get(worker_id, {}).items():
            workflow_id, task_id = split_task_key(key)
            if (workflow_id, task_id, attempt) in held:
                self._missing.pop(key, None)
                continue
            self._missing[key] = self._missing.get(key, 0) + 1
            if self._missing[key] >= MISSING_HEARTBEATS:
                lost.append(key)
        return lost
