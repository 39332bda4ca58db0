"""The run state of one workflow: which of its tasks are pending, ready, running or finished.

This module holds the seed's names ``TaskState``, ``WorkflowState`` and
``TaskDependencyGraph`` (one workflow's tasks, their dependencies and their ``TaskRun``s). The
table of every workflow the control plane knows, and the commands that drive it, are
``protocols/workflow_table.py``.

Rules of this module:

* It is pure and deterministic: no clocks, no randomness, no I/O. Time comes in as ``now_ms``.
  Every master applies the same commands in the same order and reaches the same state: we
  never iterate a set, and only iterate dicts filled in declaration or command order.
* Task states: ``pending -> ready -> running -> completed``. A task becomes ``ready`` when all
  its dependencies completed. A failure with retries left sends the task back to ``ready``; a
  failure after its retries marks it ``failed`` and every task downstream of it ``skipped``.
  Cancelling marks everything not finished ``cancelled``.
* Attempts: each dispatch starts attempt ``attempts + 1``. Only the current attempt of a
  running task may finish it or requeue it; a report about an older attempt (a worker we
  gave up on, a duplicate) is ignored and the call returns False. Requeues (worker lost) do
  not use up retries; failures do.
* Workflow states: ``pending`` until a task is dispatched, ``running`` while any task is
  unfinished (other branches keep running after a failure, like Airflow), then ``completed``
  (all completed), ``failed`` (some task failed) or ``cancelled``.
* Every transition is appended to an outbox that the owner drains with ``drain_transitions``
  (the h11 way: the state machine says what happened, the actor decides what to do about it).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from protocols.workflow_spec import TaskNode, Workflow, check_structure

dependency_log = logging.getLogger("agentflow.dependency")


class TaskState(str, Enum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED_TASK_STATES


_FINISHED_TASK_STATES = (TaskState.COMPLETED, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED)


class WorkflowState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class TaskRun:
    """The mutable run state of one task (plain data; ``to_dict`` is msgpack-native)."""

    state: TaskState = TaskState.PENDING
    attempts: int = 0  # dispatches so far; the current attempt's number
    failures: int = 0  # failed attempts so far (worker losses do not count)
    worker_id: str | None = None
    exit_code: int | None = None
    result: Any = None
    error: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    ready_ms: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    dispatch_term: int = 0  # the term of the leader whose dispatch of the current attempt committed

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in _TASK_RUN_FIELDS}
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TaskRun:
        values = dict(data)
        values["state"] = TaskState(values["state"])
        return cls(**values)


_TASK_RUN_FIELDS = dataclasses.fields(TaskRun)


class TaskDependencyGraph:
    """The tasks of one workflow, their dependencies, and their run states.

    Build it with ``TaskDependencyGraph.from_workflow(workflow, now_ms)``: the tasks with no
    dependencies are ``ready`` at once. Then drive it with ``dispatch``, ``finish``,
    ``requeue`` and ``cancel`` (or the seed's ``update_task_state``).
    """

    def __init__(self, workflow: Workflow, now_ms: int = 0) -> None:
        check_structure(workflow)
        self._index(workflow, now_ms)
        for task in workflow.tasks:
            if not task.dependencies:
                self._set_state(task.task_id, TaskState.READY, now_ms)
                dependency_log.debug("Task %s is ready (no dependencies)", task.task_id)

    def _index(self, workflow: Workflow, submitted_ms: int) -> None:
        """The lookup tables of a workflow, every task pending (shared with ``from_snapshot``,
        which needs neither the validation nor the initial transitions)."""
        self.workflow = workflow
        self.workflow_id = workflow.workflow_id
        self.tasks: dict[str, TaskNode] = {task.task_id: task for task in workflow.tasks}
        self.order: dict[str, int] = {task.task_id: index for index, task in enumerate(workflow.tasks)}
        self.dependents: dict[str, list[str]] = {task.task_id: [] for task in workflow.tasks}
        for task in workflow.tasks:
            for dependency in task.dependencies:
                self.dependents[dependency].append(task.task_id)
        self.runs: dict[str, TaskRun] = {task.task_id: TaskRun() for task in workflow.tasks}
        self.results: dict[str, Any] = {}  # task id -> result, for completed tasks only
        self.cancelled = False
        self.submitted_ms = submitted_ms
        self.finished_ms: int | None = None
        # Count of unfinished dependencies per task: readiness is O(1) per finished edge.
        self._waiting_on: dict[str, int] = {task.task_id: len(task.dependencies) for task in workflow.tasks}
        self._ready: dict[str, None] = {}  # an ordered set: ready tasks in the order they became ready
        self._unfinished = len(workflow.tasks)
        self._counts: dict[TaskState, int] = {state: 0 for state in TaskState}
        self._counts[TaskState.PENDING] = len(workflow.tasks)
        self._transitions: list[tuple[str, TaskState, TaskState]] = []
        self._dispatched_any = False

    @classmethod
    def from_workflow(cls, workflow: Workflow, now_ms: int = 0) -> TaskDependencyGraph:
        return cls(workflow, now_ms)

    # ----------------------------------------------------------------- reading

    @property
    def state(self) -> WorkflowState:
        if self._unfinished:  # (cancel finishes every task, so a cancelled workflow is never here)
            return WorkflowState.RUNNING if self._dispatched_any else WorkflowState.PENDING
        if self.cancelled:
            return WorkflowState.CANCELLED
        if self._counts[TaskState.FAILED]:
            return WorkflowState.FAILED
        if self._counts[TaskState.CANCELLED]:
            return WorkflowState.CANCELLED
        return WorkflowState.COMPLETED

    def task_state(self, task_id: str) -> TaskState:
        return self.runs[task_id].state

    def get_ready_tasks(self) -> list[str]:
        """Tasks waiting for a worker, in the order they became ready."""
        return list(self._ready)

    def is_workflow_completed(self) -> bool:
        """True when no task is left to run (completed, failed, skipped or cancelled);
        ``state`` tells which way it ended."""
        return self._unfinished == 0

    def dependency_results(self, task_id: str) -> dict[str, Any]:
        """The results of a task's direct dependencies, for handing to the task."""
        return {dependency: self.results.get(dependency) for dependency in self.tasks[task_id].dependencies}

    def get_execution_order(self) -> list[str]:
        """A topological order; among tasks free to go at once, declaration order first."""
        waiting_on = {task_id: len(task.dependencies) for task_id, task in self.tasks.items()}
        free = [self.order[task_id] for task_id, count in waiting_on.items() if count == 0]
        heapq.heapify(free)
        ids = list(self.tasks)
        order: list[str] = []
        while free:
            task_id = ids[heapq.heappop(free)]
            order.append(task_id)
            for dependent in self.dependents[task_id]:
                waiting_on[dependent] -= 1
                if waiting_on[dependent] == 0:
                    heapq.heappush(free, self.order[dependent])
        return order

    def get_dependency_chain(self, task_id: str) -> list[str]:
        """Every task ``task_id`` depends on, directly or not, in execution order."""
        upstream: dict[str, None] = {}
        stack = list(reversed(self.tasks[task_id].dependencies))
        while stack:
            current = stack.pop()
            if current in upstream:
                continue
            upstream[current] = None
            stack.extend(reversed(self.tasks[current].dependencies))
        return [each for each in self.get_execution_order() if each in upstream]

    def get_dependents_chain(self, task_id: str) -> list[str]:
        """Every task downstream of ``task_id``, in execution order."""
        downstream = self._downstream(task_id)
        return [each for each in self.get_execution_order() if each in downstream]

    def critical_path(self, durations_ms: dict[str, int] | None = None) -> tuple[list[str], int]:
        """The longest chain of tasks by duration, and its total duration in ms.

        A task's duration is ``durations_ms[task_id]`` when given, else how long it ran (when
        it finished), else its ``timeout_s`` as an upper bound, else 0. Ties go to the chain
        found first in execution order.
        """
        finish_ms: dict[str, int] = {}
        previous: dict[str, str | None] = {}
        for task_id in self.get_execution_order():
            start_ms, before = 0, None
            for dependency in self.tasks[task_id].dependencies:
                if before is None or finish_ms[dependency] > start_ms:
                    start_ms, before = finish_ms[dependency], dependency
            finish_ms[task_id] = start_ms + self._duration_ms(task_id, durations_ms)
            previous[task_id] = before
        if not finish_ms:
            return [], 0
        end = max(finish_ms, key=lambda task_id: (finish_ms[task_id], -self.order[task_id]))
        path = [end]
        while previous[path[-1]] is not None:
            path.append(previous[path[-1]])
        path.reverse()
        return path, finish_ms[end]

    def _duration_ms(self, task_id: str, durations_ms: dict[str, int] | None) -> int:
        if durations_ms is not None and task_id in durations_ms:
            return int(durations_ms[task_id])
        run = self.runs[task_id]
        if run.started_ms is not None and run.finished_ms is not None:
            return run.finished_ms - run.started_ms
        timeout_s = self.tasks[task_id].timeout_s
        return int(timeout_s * 1000) if timeout_s is not None else 0

    def waiting_on(self, task_id: str) -> int:
        """How many of the task's dependencies have not completed."""
        return self._waiting_on[task_id]

    def set_priority(self, task_id: str, priority: int) -> bool:
        """Change an unfinished task's priority (its declaration changes, snapshots keep it);
        False if the task already finished."""
        if self.runs[task_id].state.is_finished:
            return False
        task = dataclasses.replace(self.tasks[task_id], priority=int(priority))
        self.tasks[task_id] = task
        self.workflow.tasks[self.order[task_id]] = task
        return True

    def progress(self) -> dict:
        """``{"total", "finished", "fraction_done", "counts": {state: n}}`` (all states listed)."""
        total = len(self.tasks)
        finished = total - self._unfinished
        return {
            "total": total,
            "finished": finished,
            "fraction_done": finished / total if total else 1.0,
            "counts": {state.value: count for state, count in self._counts.items()},
        }

    def drain_transitions(self) -> list[tuple[str, TaskState, TaskState]]:
        """``(task_id, old_state, new_state)`` for every change since the last drain, in order."""
        transitions, self._transitions = self._transitions, []
        return transitions

    # ----------------------------------------------------------------- transitions

    def dispatch(self, task_id: str, worker_id: str, now_ms: int = 0, attempt: int | None = None,
                 term: int = 0) -> int:
        """``ready -> running`` on ``worker_id`` by the leader of ``term``; returns the new attempt
        number, or 0 if the task is not ready (or ``attempt`` is given and is not the next attempt)."""
        run = self.runs[task_id]
        if run.state is not TaskState.READY:
            return 0
        if attempt is not None and attempt != run.attempts + 1:
            return 0
        run.attempts += 1
        run.dispatch_term = term
        run.worker_id = worker_id
        run.started_ms = now_ms
        run.finished_ms = None
        self._dispatched_any = True
        self._set_state(task_id, TaskState.RUNNING, now_ms)
        return run.attempts

    def finish(
        self,
        task_id: str,
        attempt: int | None,
        succeeded: bool,
        now_ms: int = 0,
        *,
        exit_code: int | None = None,
        result: Any = None,
        error: str = "",
        stdout_tail: str = "",
        stderr_tail: str = "",
        term: int | None = None,
    ) -> bool:
        """The current attempt of a running task ended. On success, dependents whose
        dependencies are now all complete become ready. On failure, the task goes back to
        ready while it has retries left, else it fails and everything downstream is skipped.
        Returns False (and changes nothing) for a stale attempt, a run of another dispatch of
        the same attempt number (``term``, when given, is not the committed dispatch's), or a
        task not running."""
        run = self.runs[task_id]
        if run.state is not TaskState.RUNNING or (attempt is not None and attempt != run.attempts):
            return False
        if term is not None and term != run.dispatch_term:
            return False
        run.exit_code = exit_code
        run.error = error
        run.stdout_tail = stdout_tail
        run.stderr_tail = stderr_tail
        run.finished_ms = now_ms
        if succeeded:
            run.result = result
            self.results[task_id] = result
            self._set_state(task_id, TaskState.COMPLETED, now_ms)
            for dependent in self.dependents[task_id]:
                self._waiting_on[dependent] -= 1
                if self._waiting_on[dependent] == 0 and self.runs[dependent].state is TaskState.PENDING:
                    self._set_state(dependent, TaskState.READY, now_ms)
                    dependency_log.debug("Task %s is ready (all dependencies completed)", dependent)
            return True
        run.failures += 1
        if run.failures <= self.tasks[task_id].retries:
            self._set_state(task_id, TaskState.READY, now_ms)
            return True
        self._set_state(task_id, TaskState.FAILED, now_ms)
        # Depth-first order from the task: deterministic, and O(downstream) rather than a full
        # topological sort per failure.
        for downstream in self._downstream(task_id):
            if not self.runs[downstream].state.is_finished:
                self.runs[downstream].finished_ms = now_ms
                self._set_state(downstream, TaskState.SKIPPED, now_ms)
        return True

    def requeue(self, task_id: str, attempt: int | None = None, now_ms: int = 0, reason: str = "") -> bool:
        """``running -> ready`` without using a retry (its worker was lost or gave it back)."""
        run = self.runs[task_id]
        if run.state is not TaskState.RUNNING or (attempt is not None and attempt != run.attempts):
            return False
        run.error = reason
        run.worker_id = None
        self._set_state(task_id, TaskState.READY, now_ms)
        return True

    def cancel(self, now_ms: int = 0) -> list[str]:
        """Cancel the workflow: every unfinished task becomes cancelled. Returns the tasks that
        were ready or running (the queue and workers must let go of them)."""
        self.cancelled = True
        return self._cancel_each(list(self.runs), now_ms)

    def cancel_task(self, task_id: str, now_ms: int = 0) -> list[str]:
        """Cancel one unfinished task and everything downstream of it; the rest goes on.
        Returns the cancelled tasks that were ready or running."""
        if self.runs[task_id].state.is_finished:
            return []
        return self._cancel_each([task_id, *self._downstream(task_id)], now_ms)

    def _cancel_each(self, task_ids: list[str], now_ms: int) -> list[str]:
        """Cancel every unfinished task of ``task_ids``; returns those that were ready or running."""
        released: list[str] = []
        for task_id in task_ids:
            run = self.runs[task_id]
            if run.state.is_finished:
                continue
            if run.state in (TaskState.READY, TaskState.RUNNING):
                released.append(task_id)
            run.finished_ms = now_ms
            self._set_state(task_id, TaskState.CANCELLED, now_ms)
        return released

    def update_task_state(self, task_id: str, state: TaskState | str, attempt: int | None = None, **details: Any) -> bool:
        """The seed's single entry point. ``state`` is where the task should go:

        * ``running``: dispatch (``worker_id=`` in details); ``attempt``, if given, must be the next one.
        * ``completed`` / ``failed``: the current attempt ended (``exit_code``, ``result``, ``error``,
          ``stdout_tail``, ``stderr_tail``); a failure with retries left goes back to ready.
        * ``ready``: requeue a running task without using a retry.
        * ``cancelled``: cancel this task and everything downstream.

        Returns False when the change does not apply (stale attempt, wrong current state).
        """
        state = TaskState(state)
        now_ms = details.pop("now_ms", 0)
        if state is TaskState.RUNNING:
            return self.dispatch(task_id, details.get("worker_id") or "", now_ms, attempt) > 0
        if state in (TaskState.COMPLETED, TaskState.FAILED):
            return self.finish(task_id, attempt, state is TaskState.COMPLETED, now_ms, **details)
        if state is TaskState.READY:
            return self.requeue(task_id, attempt, now_ms, details.get("reason", ""))
        if state is TaskState.CANCELLED:
            if self.runs[task_id].state.is_finished:
                return False
            self.cancel_task(task_id, now_ms)
            return True
        return False  # pending and skipped are only ever reached through the rules above

    # ----------------------------------------------------------------- internals

    def _set_state(self, task_id: str, new_state: TaskState, now_ms: int) -> None:
        run = self.runs[task_id]
        old_state = run.state
        run.state = new_state
        self._counts[old_state] -= 1
        self._counts[new_state] += 1
        if old_state is TaskState.READY:
            del self._ready[task_id]
        if new_state is TaskState.READY:
            self._ready[task_id] = None
            run.ready_ms = now_ms
        if new_state.is_finished and not old_state.is_finished:
            self._unfinished -= 1
            if self._unfinished == 0:
                self.finished_ms = now_ms
        self._transitions.append((task_id, old_state, new_state))

    def _downstream(self, task_id: str) -> dict[str, None]:
        seen: dict[str, None] = {}
        stack = list(reversed(self.dependents[task_id]))
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen[current] = None
            stack.extend(reversed(self.dependents[current]))
        return seen

    # ----------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict:
        return {
            "workflow": self.workflow.to_dict(),
            "runs": {task_id: run.to_dict() for task_id, run in self.runs.items()},
            "results": dict(self.results),
            "ready": list(self._ready),
            "cancelled": self.cancelled,
            "submitted_ms": self.submitted_ms,
            "finished_ms": self.finished_ms,
            "dispatched_any": self._dispatched_any,
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict) -> TaskDependencyGraph:
        graph = cls.__new__(cls)  # a snapshot holds a validated workflow and its states: no replay
        graph._index(Workflow.from_dict(snapshot["workflow"]), snapshot["submitted_ms"])
        graph.runs = {task_id: TaskRun.from_dict(run) for task_id, run in snapshot["runs"].items()}
        graph.results = dict(snapshot["results"])
        graph._ready = {task_id: None for task_id in snapshot["ready"]}
        graph.cancelled = snapshot["cancelled"]
        graph.finished_ms = snapshot["finished_ms"]
        graph._dispatched_any = snapshot["dispatched_any"]
        graph._counts = {state: 0 for state in TaskState}
        for run in graph.runs.values():
            graph._counts[run.state] += 1
        graph._unfinished = sum(1 for run in graph.runs.values() if not run.state.is_finished)
        graph._waiting_on = {
            task_id: sum(1 for dep in task.dependencies if graph.runs[dep].state is not TaskState.COMPLETED)
            for task_id, task in graph.tasks.items()
        }
        return graph
