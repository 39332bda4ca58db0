"""The replicated table of workflows: every workflow the control plane knows, and the
``wf.*`` commands that change it.

``WorkflowTable.apply`` takes the command records below in log order, on every master, and
drives each workflow's ``TaskDependencyGraph`` (``protocols/workflow_run.py``). It is the
replicated part of the scheduler; ``protocols/control.py`` composes it with the other tables.

Rules of this module:

* It is pure and deterministic: time comes inside the command (``now_ms``), never from a clock.
* A well-formed command never raises: one that does not apply (unknown workflow, stale
  attempt) returns ``Applied(ok=False, reason=...)``, identically on every master.
* The command records are wire records under stable tags: their fields only ever grow.
* Bounded: the table keeps what runs and what finished until the leader's retention policy
  forgets it (``ForgetWorkflow``, proposed like any command); a forgotten workflow leaves a
  tombstone (its final state, when it finished, how many tasks) so that `status` can say so,
  the last ``MAX_FORGOTTEN`` of them. ``finished`` lists the finished workflows in the order
  they finished, with when: what retention looks at. ``clock_ms`` is the latest time applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocols.wire import record
from protocols.workflow_run import TaskDependencyGraph, TaskState
from protocols.workflow_spec import Workflow, WorkflowError, task_key

MAX_FORGOTTEN = 10_000  # tombstones kept for `status` of forgotten workflows (~60 bytes each)


@record("wf.submit")
class SubmitWorkflow:
    workflow: Workflow
    now_ms: int


@record("wf.dispatch")
class DispatchTask:
    """The leader placed a ready task on a worker; ``attempt`` is the attempt it starts, ``term``
    the leader's (a deposed leader's uncommitted dispatch may have used the same attempt number)."""

    workflow_id: str
    task_id: str
    attempt: int
    worker_id: str
    now_ms: int
    term: int = 0


@record("wf.finish")
class FinishTask:
    workflow_id: str
    task_id: str
    attempt: int
    succeeded: bool
    now_ms: int
    exit_code: int | None = None
    result: Any = None
    error: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    term: int = 0  # the reported run's dispatch (TaskFinished.term): it must be the committed one


@record("wf.requeue")
class RequeueTask:
    """Give a running task back to the queue without using a retry (its worker was lost)."""

    workflow_id: str
    task_id: str
    attempt: int
    reason: str
    now_ms: int


@record("wf.cancel")
class CancelWorkflow:
    workflow_id: str
    now_ms: int


@record("wf.forget")
class ForgetWorkflow:
    """Drop a finished workflow from the replicated state (retention is the leader's policy)."""

    workflow_id: str


@record("wf.reprioritize")
class ReprioritizeTask:
    """Change an unfinished task's priority (a client's command; a new leader's queue keeps it)."""

    workflow_id: str
    task_id: str
    priority: int


@dataclass
class Applied:
    """What applying one command did, for the actor that owns the table.

    ``ready``: task keys that became ready (enqueue them, in this order). ``released``: task
    keys that were ready or running and no longer are for a reason other than dispatch or
    finish (cancelled or skipped: take them out of the queue, tell their workers).
    ``finished``: workflow ids that just reached a final state.
    """

    ok: bool
    reason: str = ""
    attempt: int = 0
    ready: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)


class WorkflowTable:
    """Every workflow the control plane knows: the replicated part of the scheduler.

    ``apply(command)`` takes the ``wf.*`` records above in log order and returns ``Applied``.
    It never raises for a well-formed command: a command that does not apply (unknown
    workflow, stale attempt) returns ``Applied(ok=False, reason=...)``, identically on every
    master. No-op tasks (no command, call or agent) complete the moment they are ready,
    within the same apply, so they never reach the queue.
    """

    def __init__(self) -> None:
        self.graphs: dict[str, TaskDependencyGraph] = {}
        self.finished: dict[str, int] = {}  # workflow id -> finished_ms, in the order they finished
        self.forgotten: dict[str, dict] = {}  # workflow id -> tombstone, oldest first
        self.clock_ms = 0  # the latest now_ms applied

    def __contains__(self, workflow_id: str) -> bool:
        return workflow_id in self.graphs

    def get(self, workflow_id: str) -> TaskDependencyGraph | None:
        return self.graphs.get(workflow_id)

    def apply(self, command: Any) -> Applied:
        now_ms = getattr(command, "now_ms", 0)
        if now_ms > self.clock_ms:
            self.clock_ms = now_ms
        if isinstance(command, SubmitWorkflow):
            return self._submit(command)
        if isinstance(command, ForgetWorkflow):
            return self._forget(command.workflow_id)
        graph = self.graphs.get(command.workflow_id)
        if graph is None:
            return Applied(False, "unknown workflow")
        was_finished = graph.is_workflow_completed()
        if getattr(command, "task_id", None) is not None and command.task_id not in graph.tasks:
            return Applied(False, "unknown task")
        if isinstance(command, DispatchTask):
            attempt = graph.dispatch(command.task_id, command.worker_id, command.now_ms, command.attempt,
                                     command.term)
            applied = Applied(attempt > 0, "" if attempt else "task is not ready or attempt is stale", attempt)
        elif isinstance(command, FinishTask):
            ok = graph.finish(
                command.task_id,
                command.attempt,
                command.succeeded,
                command.now_ms,
                exit_code=command.exit_code,
                result=command.result,
                error=command.error,
                stdout_tail=command.stdout_tail,
                stderr_tail=command.stderr_tail,
                term=command.term,
            )
            applied = Applied(ok, "" if ok else "task is not running or attempt is stale", command.attempt)
        elif isinstance(command, RequeueTask):
            ok = graph.requeue(command.task_id, command.attempt, command.now_ms, command.reason)
            applied = Applied(ok, "" if ok else "task is not running or attempt is stale", command.attempt)
        elif isinstance(command, CancelWorkflow):
            if was_finished:
                return Applied(False, "workflow already finished")
            graph.cancel(command.now_ms)
            applied = Applied(True)
        elif isinstance(command, ReprioritizeTask):
            ok = graph.set_priority(command.task_id, command.priority)
            return Applied(ok, "" if ok else "task already finished")
        else:
            return Applied(False, f"not a workflow command: {type(command).__name__}")
        self._settle(graph, applied, now_ms)
        if not was_finished and graph.is_workflow_completed():
            self._finished(graph, applied)
        return applied

    def _finished(self, graph: TaskDependencyGraph, applied: Applied) -> None:
        applied.finished.append(graph.workflow_id)
        self.finished[graph.workflow_id] = graph.finished_ms or 0

    def _forget(self, workflow_id: str) -> Applied:
        graph = self.graphs.get(workflow_id)
        if graph is None:
            return Applied(False, "unknown workflow")
        if not graph.is_workflow_completed():
            return Applied(False, "workflow is still running")
        del self.graphs[workflow_id]
        self.finished.pop(workflow_id, None)
        self.forgotten[workflow_id] = {"name": graph.workflow.name, "state": graph.state.value,
                                       "finished_ms": graph.finished_ms, "tasks": len(graph.tasks)}
        while len(self.forgotten) > MAX_FORGOTTEN:
            del self.forgotten[next(iter(self.forgotten))]
        return Applied(True)

    def _submit(self, command: SubmitWorkflow) -> Applied:
        workflow = command.workflow
        if workflow.workflow_id in self.graphs:
            return Applied(False, f"workflow {workflow.workflow_id!r} already exists")
        try:
            graph = TaskDependencyGraph(workflow, command.now_ms)
        except WorkflowError as error:
            return Applied(False, str(error))
        self.graphs[workflow.workflow_id] = graph
        self.forgotten.pop(workflow.workflow_id, None)  # an id may be used again once forgotten
        applied = Applied(True)
        self._settle(graph, applied, command.now_ms)
        if graph.is_workflow_completed():
            self._finished(graph, applied)
        return applied

    def _settle(self, graph: TaskDependencyGraph, applied: Applied, now_ms: int) -> None:
        """Complete ready no-op tasks (which may make more ready), and sort the transitions
        into what the owner must enqueue and what it must let go of."""
        while True:
            transitions = graph.drain_transitions()
            if not transitions:
                return
            for task_id, old_state, new_state in transitions:
                key = task_key(graph.workflow_id, task_id)
                if new_state is TaskState.READY:
                    if graph.tasks[task_id].is_noop:
                        attempt = graph.dispatch(task_id, "", now_ms)
                        graph.finish(task_id, attempt, True, now_ms)
                    else:
                        applied.ready.append(key)
                elif old_state in (TaskState.READY, TaskState.RUNNING) and new_state in (
                    TaskState.CANCELLED,
                    TaskState.SKIPPED,
                ):
                    applied.released.append(key)

    # ----------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict:
        return {"workflows": [graph.to_snapshot() for graph in self.graphs.values()],
                "finished": [[workflow_id, finished_ms] for workflow_id, finished_ms in self.finished.items()],
                "forgotten": [[workflow_id, tombstone] for workflow_id, tombstone in self.forgotten.items()],
                "clock_ms": self.clock_ms}

    @classmethod
    def from_snapshot(cls, snapshot: dict) -> WorkflowTable:
        table = cls()
        for graph_snapshot in snapshot["workflows"]:
            graph = TaskDependencyGraph.from_snapshot(graph_snapshot)
            table.graphs[graph.workflow_id] = graph
        table.finished = {workflow_id: finished_ms for workflow_id, finished_ms in snapshot.get("finished", ())}
        table.forgotten = {workflow_id: tombstone for workflow_id, tombstone in snapshot.get("forgotten", ())}
        table.clock_ms = snapshot.get("clock_ms", 0)
        return table
