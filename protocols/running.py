"""Where the leader believes each running task runs, checked against what workers say they hold.

Role: a soft index of the dispatch state (protocols/dispatch.py), kept from applied commands
(a DispatchTask puts a task on its worker; a finish, requeue, cancel or skip takes it off) and
rebuilt from the replicated table by a new leader. A worker's loss requeues what is on it;
its heartbeats are reconciled with it.

Rules: a heartbeat lists every attempt its worker holds (waiting, running, or reported and not
yet accepted). A task the index puts on a worker that its heartbeats have not listed for a grace
period (two heartbeats at least) was lost on the way (a dropped assignment; a report accepted for
another dispatch of the same attempt number): it is requeued. A grace, because heartbeats may
leave before the assignment arrives (on a slow link, for longer than one interval).
"""

from __future__ import annotations

from typing import Any, Iterator

from protocols.tasks import attempt_key
from protocols.workflow_run import TaskState
from protocols.workflow_spec import split_task_key, task_key
from protocols.workflow_table import RequeueTask

MISSING_HEARTBEATS = 2
CLAIM, LOST, CANCEL = "claim", "lost", "cancel"


def held_attempts(workflows: Any, worker_id: str, held: list, dispatching: dict) -> Iterator[tuple]:
    """(verdict, workflow id, task id, attempt, graph) for each attempt a heartbeat of
    ``worker_id`` lists: CLAIM, the table runs that attempt there; LOST, the task is ready and
    that is its next attempt: a previous leader sent the dispatch and lost it before it
    committed (its run is cancelled, not adopted: it may have started on a dependency's
    completion that never committed either, and this leader may reuse the number); CANCEL,
    anything else not being dispatched (``dispatching``: key -> (worker, attempt)) now.
    Malformed items are skipped."""
    for item in held:
        attempt = attempt_key(item)
        if attempt is None:
            continue
        workflow_id, task_id, number = attempt
        graph = workflows.get(workflow_id)
        run = graph.runs.get(task_id) if graph is not None else None
        key = task_key(workflow_id, task_id)
        if runs_there(run, worker_id, number):
            yield CLAIM, workflow_id, task_id, number, graph
        elif key in dispatching:
            continue
        elif run is not None and run.state is TaskState.READY and run.attempts + 1 == number:
            yield LOST, workflow_id, task_id, number, graph
        else:
            yield CANCEL, workflow_id, task_id, number, graph


def runs_there(run: Any, worker_id: str, attempt: int) -> bool:
    """Whether the table runs ``attempt`` of the task (``run``: its TaskRun, or None) on ``worker_id``."""
    return run is not None and run.state is TaskState.RUNNING and run.attempts == attempt and run.worker_id == worker_id


def runs_elsewhere(run: Any, dispatching: tuple | None, worker_id: str, attempt: int) -> bool:
    """Whether a report of ``attempt`` from ``worker_id`` is of another run than the one the
    table (or the dispatch in flight) names: a deposed leader's dispatch reused the number on
    another worker, and this run must not finish the task."""
    if dispatching is not None:
        return dispatching[1] == attempt and dispatching[0] != worker_id
    return run is not None and run.state is TaskState.RUNNING and run.attempts == attempt and run.worker_id != worker_id


def requeue_commands(workflows: Any, keys: list[str], reason: str, now_ms: int) -> list[RequeueTask]:
    """A RequeueTask of each of these tasks that still runs, as the table says."""
    requeues = []
    for key in keys:
        workflow_id, task_id = split_task_key(key)
        graph = workflows.get(workflow_id)
        if graph is not None and graph.runs[task_id].state is TaskState.RUNNING:
            requeues.append(RequeueTask(workflow_id, task_id, graph.runs[task_id].attempts, reason, now_ms))
    return requeues


class RunningIndex:
    def __init__(self) -> None:
        self.on_worker: dict[str, dict[str, int]] = {}  # worker -> {task key: attempt}
        self._where: dict[str, str] = {}  # task key -> worker
        self._missing: dict[str, tuple[int, int]] = {}  # task key -> (first heartbeat without it, how many)

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

    def keys(self):
        """Every task key the index puts on a worker."""
        return self._where.keys()

    def tasks_on(self, worker_id: str) -> list[str]:
        return list(self.on_worker.get(worker_id, ()))

    def lost(self, worker_id: str, held: set[tuple[str, str, int]], now_ms: int, grace_ms: int) -> list[str]:
        """The tasks on ``worker_id`` that its heartbeats up to this one (``held``: its attempt
        keys) have not listed for ``grace_ms``, in ``MISSING_HEARTBEATS`` at least."""
        lost = []
        for key, attempt in self.on_worker.get(worker_id, {}).items():
            workflow_id, task_id = split_task_key(key)
            if (workflow_id, task_id, attempt) in held:
                self._missing.pop(key, None)
                continue
            since_ms, count = self._missing.get(key, (now_ms, 0))
            self._missing[key] = since_ms, count + 1
            if count + 1 >= MISSING_HEARTBEATS and now_ms - since_ms >= grace_ms:
                lost.append(key)
        return lost
