"""SchedulerActor: runs workflows on workers, from the leader, through the Raft log.

Role: on every master it watches applied workflow commands; on the leader it also keeps the
soft state of dispatch (the priority queue of ready tasks and the worker registry with its
heartbeats and reservations), places ready tasks on workers, and turns workers' reports into
committed commands.

Rules:

* Every change of a task's state is a committed command (SubmitWorkflow, DispatchTask,
  FinishTask, RequeueTask, CancelWorkflow) applied by the RaftActor; this actor only proposes
  them and reacts to what they did (``Applied``). A task's assignment leaves with its
  DispatchTask proposal (one commit less per hop); the attempt number is the one the entry
  will commit, and only that attempt can complete the task: a late report of an older one is
  ignored. If the leader dies before the entry commits, the next leader adopts the run when
  the worker reports it, or runs the task again (at least once).
* Soft state lives on the leader only: queue order, heartbeats, load, reservations. A new leader
  rebuilds the queue from the replicated task states, learns workers again from their
  heartbeats (``known=False`` makes them say hello), and requeues running tasks nobody claims
  within a grace period. Execution is at-least-once; a completion is applied exactly once.
* Batches: one Batch log entry per dispatch round and per report batch, one AssignTasks per
  worker per round, never more tasks than the worker's free capacity (no prefetch, so
  priorities hold). A reported attempt frees its slot at once, before its completion commits.
* Spawned pinned, like the RaftActor: it reads the replicated state through the
  ``ControlPlane`` the master hands it (same thread), proposes only through it, and never blocks.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from actors.raft import Applied, ControlPlane, LeadershipChanged
from protocols.control import (
    Batch,
    CancelWorkflowRequest,
    ClientCommand,
    SubmitWorkflowRequest,
    WorkersRequest,
    WorkflowStatusRequest,
)
from protocols.names import WORKER_ACTOR
from protocols.queue import PriorityTaskQueue
from protocols.sessions import ClientSessions
from protocols.registry import HealthCheckConfig, PlacementError, WorkerRegistry, WorkerStatus
from protocols.tasks import (
    ERROR_CANCELLED,
    ERROR_DRAINING,
    AssignTasks,
    CancelTasks,
    HeartbeatAck,
    ReportsAccepted,
    TaskAssignment,
    TasksFinished,
    WorkerGoodbye,
    WorkerHeartbeat,
    WorkerHello,
    WorkerWelcome,
)
from protocols.wire import ErrorRecord, Redirect, Tick
from protocols.workflow_run import TaskState
from protocols.workflow_spec import Workflow, WorkflowError, check_structure, split_task_key, task_key
from protocols.workflow_table import CancelWorkflow, DispatchTask, FinishTask, RequeueTask, SubmitWorkflow
from runtime.actor import Actor
from runtime.future import Future
from runtime.log import get_logger

log = get_logger("scheduler")



def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class SchedulerActor(Actor):
    def __init__(self, control: ControlPlane, tick_s: float = 0.1, health: HealthCheckConfig | None = None,
                 claim_grace_ms: int = 3000) -> None:
        super().__init__()
        self.control = control
        self.tick_s = tick_s
        self.health = health or HealthCheckConfig()
        self.claim_grace_ms = claim_grace_ms
        self.is_leader = False
        self.queue = PriorityTaskQueue()
        self.registry = WorkerRegistry(self.health)
        self._dispatching: dict[str, tuple[str, int]] = {}  # key -> (worker, attempt), not yet applied
        self._unclaimed: dict[str, int] = {}  # running task key -> deadline_ms (after a leader change)
        self._unheld: dict[str, dict[str, int]] = {}  # worker -> running key its heartbeats omit -> since_ms
        self._client_commits: dict[tuple[str, int], Future] = {}  # (client id, seq) -> its commit in flight
        self._timer_id: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        me = self.node.lookup(self.address)
        self.control.watch("wf.", me)
        self._timer_id = self.node.every(self.tick_s, me, "scheduler")

    def on_stop(self) -> None:
        if self._timer_id is not None:
            self.node.cancel_timer(self._timer_id)

    @property
    def workflows(self):
        return self.control.state.workflows

    def _redirect(self) -> Redirect:
        return self.control.redirect()

    # ------------------------------------------------------------------ messages

    def receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is Applied:
            if self.is_leader:
                self._on_applied(message.items)
            return None
        if kind is Tick:
            if self.is_leader:
                self._on_tick()
            return None
        if kind is LeadershipChanged:
            self._on_leadership(message.is_leader)
            return None
        if kind in (WorkerHello, WorkerHeartbeat, TasksFinished, SubmitWorkflowRequest, CancelWorkflowRequest,
                    WorkersRequest, WorkflowStatusRequest) and not self.is_leader:  # a lagging follower said "unknown"
            return self._redirect()
        if kind is WorkerHeartbeat:
            return self._on_heartbeat(message)
        if kind is TasksFinished:
            return self._on_reports(message)
        if kind is WorkerHello:
            self.registry.register(message.info, monotonic_ms())
            self._dispatch()
            return WorkerWelcome(message.info.worker_id, self.health.heartbeat_interval_ms)
        if kind is WorkerGoodbye:
            if self.is_leader:
                self._worker_lost(message.worker_id, "worker said goodbye", unregister=True)
            return None
        if kind is SubmitWorkflowRequest:
            return self._answer_client(message.client_id, message.seq, lambda: self._submission(message.workflow))
        if kind is CancelWorkflowRequest:
            return self._answer_client(message.client_id, message.seq,
                                       lambda: CancelWorkflow(message.workflow_id, monotonic_ms()))
        if kind is WorkflowStatusRequest:
            return self.workflow_status(message.workflow_id, message.tasks)
        if kind is WorkersRequest:
            return self.workers_table()
        return ErrorRecord("unknown_message", kind.__name__)

    # ------------------------------------------------------------------ leadership

    def _on_leadership(self, is_leader: bool) -> None:
        self.is_leader = is_leader
        self.queue = PriorityTaskQueue()
        self.registry = WorkerRegistry(self.health)
        self._dispatching.clear()
        self._unclaimed.clear()
        self._unheld.clear()
        if not is_leader:
            return
        now_ms = monotonic_ms()
        for graph in self.workflows.graphs.values():
            if graph.is_workflow_completed():
                continue
            for task_id in graph.get_ready_tasks():
                self._enqueue(graph, task_id, now_ms)
            for task_id, run in graph.runs.items():
                if run.state is TaskState.RUNNING:
                    self._unclaimed[task_key(graph.workflow_id, task_id)] = now_ms + self.claim_grace_ms
        log.info("Scheduler on %s leads: %d ready tasks queued, %d running tasks to be claimed",
                 self.node.node_id, len(self.queue), len(self._unclaimed))

    # ------------------------------------------------------------------ applied commands

    def _on_applied(self, items: list[tuple[int, Any, Any]]) -> None:
        cancels: dict[str, list[list]] = {}
        now_ms = monotonic_ms()
        for _, command, result in items:
            if not isinstance(result, dict):
                continue
            if isinstance(command, DispatchTask):
                self._on_dispatch_applied(command, result, cancels)
            elif isinstance(command, (FinishTask, RequeueTask)) and result.get("ok"):
                # Only the current attempt frees its reservation: a stale report must not free the
                # slot of a newer attempt of the same task on another worker.
                key = task_key(command.workflow_id, command.task_id)
                self.registry.release(self.registry.holder_of(key) or "", key)
            for key in result.get("released", ()):
                self.queue.remove(key)
                self._release_running(key, cancels)
            for key in result.get("ready", ()):
                if key in self._dispatching:
                    continue  # dispatched in the same entry (see _dependents_ready_on)
                workflow_id, task_id = split_task_key(key)
                graph = self.workflows.get(workflow_id)
                if graph is not None:
                    self._enqueue(graph, task_id, now_ms)
            for workflow_id in result.get("finished", ()):
                graph = self.workflows.get(workflow_id)
                if graph is not None:
                    log.info("Workflow %s %s", workflow_id, graph.state.value)
        for worker_id, keys in cancels.items():
            self._tell_worker(worker_id, CancelTasks(worker_id, keys))
        self._dispatch()

    def _on_dispatch_applied(self, command: DispatchTask, result: dict, cancels: dict[str, list[list]]) -> None:
        """The worker already has the task (it was sent with the proposal); undo it if the log refused."""
        key = task_key(command.workflow_id, command.task_id)
        self._dispatching.pop(key, None)
        if result.get("ok"):
            self.queue.remove(key)  # queued here before a previous leader's dispatch of it committed
        else:
            self.registry.release(command.worker_id, key)
            cancels.setdefault(command.worker_id, []).append([command.workflow_id, command.task_id, command.attempt])

    def _release_running(self, key: str, cancels: dict[str, list[list]]) -> None:
        """A task left ready/running without finishing (cancelled, skipped): free its worker."""
        worker_id = self.registry.holder_of(key)
        if worker_id is None:
            return
        workflow_id, task_id = split_task_key(key)
        graph = self.workflows.get(workflow_id)
        attempt = graph.runs[task_id].attempts if graph else 0
        cancels.setdefault(worker_id, []).append([workflow_id, task_id, attempt])
        self.registry.release(worker_id, key)

    # ------------------------------------------------------------------ dispatch

    def _enqueue(self, graph, task_id: str, now_ms: int) -> None:
        task = graph.tasks[task_id]
        self.queue.enqueue(task_key(graph.workflow_id, task_id), task.priority, now_ms,
                           retries=graph.runs[task_id].failures)

    def _dispatch(self) -> None:
        """Place queued tasks on workers with free capacity, highest score first."""
        if not self.queue:
            return
        free = self.registry.free_slot_count()
        if free <= 0:
            return
        now_ms = monotonic_ms()
        placed: list[tuple[str, str, list[int]]] = []

        def no_longer_ready(key: str) -> bool:
            workflow_id, task_id = split_task_key(key)
            graph = self.workflows.get(workflow_id)
            return graph is None or graph.runs[task_id].state is not TaskState.READY

        def place(key: str) -> bool:
            workflow_id, task_id = split_task_key(key)
            spot = self._place(self.workflows.get(workflow_id), task_id)
            if spot is not None:
                placed.append((key, *spot))
            return spot is not None

        self.queue.dequeue_batch(free, accept=place, max_scanned=max(64, free * 4), drop=no_longer_ready)
        if placed:
            commands, assignments = self._assignments(placed, now_ms, {})
            self.control.propose(Batch(commands))
            self._send_assignments(assignments)

    def _place(self, graph, task_id: str) -> tuple[str, list[int]] | None:
        """Reserve a worker for a task: (worker id, GPU indices), or None if none fits now."""
        requirements = graph.tasks[task_id].requirements
        worker_id = self.registry.select(requirements)
        if worker_id is None:
            return None
        try:
            return worker_id, self.registry.reserve(worker_id, task_key(graph.workflow_id, task_id), requirements)
        except PlacementError:
            return None

    def _assignments(self, placed: list[tuple[str, str, list[int]]], now_ms: int,
                     known_results: dict[str, dict]) -> tuple[list, dict[str, list[TaskAssignment]]]:
        """DispatchTask commands and the assignments that go with them.

        The assignments leave with the proposal, not after its commit: one commit less per hop.
        If this leader dies before the entry commits, the next one adopts the run or runs the task
        again (at least once); only the attempt the entry names can complete it."""
        assignments: dict[str, list[TaskAssignment]] = {}
        commands = []
        for key, worker_id, gpus in placed:
            workflow_id, task_id = split_task_key(key)
            graph = self.workflows.get(workflow_id)
            task = graph.tasks[task_id]
            attempt = graph.runs[task_id].attempts + 1
            self._dispatching[key] = (worker_id, attempt)
            commands.append(DispatchTask(workflow_id, task_id, attempt, worker_id, now_ms))
            env = {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpus)} if gpus else {}
            known = known_results.get(workflow_id, {})
            inputs = {dependency: known[dependency] if dependency in known else graph.results.get(dependency)
                      for dependency in task.dependencies}
            log.debug("Task %s dispatched to %s", task_id, worker_id)
            assignments.setdefault(worker_id, []).append(TaskAssignment(
                workflow_id, task_id, attempt, task.command, task.call, list(task.args), dict(task.kwargs),
                task.agent, task.timeout_s, env, inputs, task.agent_group))
        return commands, assignments

    def _send_assignments(self, assignments: dict[str, list[TaskAssignment]]) -> None:
        for worker_id, tasks in assignments.items():
            self._tell_worker(worker_id, AssignTasks(worker_id, tasks))

    def _dependents_ready_on(self, succeeded: list, finishing: dict[str, dict],
                             now_ms: int) -> list[tuple[str, str, list[int]]]:
        """Place the tasks that the successful reports in ``succeeded`` (whose results are in
        ``finishing``, by workflow and task) will make ready.

        Done only while nothing waits in the queue (so no queued task is passed over): their
        DispatchTask rides in the same log entry right after the FinishTasks that make them
        ready, so a chain costs one commit per hop instead of two. The candidates are taken in
        the queue's own order (priority, retry penalty, then FIFO), through a queue of their
        own, so the fast path follows the same policy as a dispatch round."""
        if self.queue:
            return []
        candidates = PriorityTaskQueue()
        for report in succeeded:
            graph = self.workflows.get(report.workflow_id)
            for child in graph.dependents.get(report.task_id, ()):
                key = task_key(report.workflow_id, child)
                if graph.runs[child].state is not TaskState.PENDING or key in self._dispatching or key in candidates:
                    continue
                if all(graph.runs[dep].state is TaskState.COMPLETED or dep in finishing[report.workflow_id]
                       for dep in graph.tasks[child].dependencies):
                    candidates.enqueue(key, graph.tasks[child].priority, now_ms, retries=graph.runs[child].failures)
        if not candidates:
            return []
        placed: list[tuple[str, str, list[int]]] = []

        def place(key: str) -> bool:
            workflow_id, task_id = split_task_key(key)
            spot = self._place(self.workflows.get(workflow_id), task_id)
            if spot is None:
                return False
            self._dispatching[key] = (spot[0], 0)  # reserved; _assignments sets the attempt
            placed.append((key, *spot))
            return True

        # Those left over become ready when the entry applies and go through the queue then.
        candidates.dequeue_batch(self.registry.free_slot_count(), accept=place)
        return placed

    def _tell_worker(self, worker_id: str, message: Any) -> None:
        entry = self.registry.get_worker(worker_id)
        if entry is None or not entry.info.address:
            self.node.count("scheduler_unknown_worker")
            return
        self.node.ref(entry.info.address, WORKER_ACTOR, worker_id).tell(message)

    # ------------------------------------------------------------------ workers

    def _on_heartbeat(self, heartbeat: WorkerHeartbeat) -> HeartbeatAck:
        now_ms = monotonic_ms()
        if not self.registry.update_heartbeat(heartbeat.worker_id, now_ms, heartbeat.load):
            return HeartbeatAck(False, [])
        if heartbeat.draining:
            self.registry.set_worker_status(heartbeat.worker_id, WorkerStatus.DRAINING)
        cancel = []
        listed = set()
        for item in heartbeat.running:
            try:
                workflow_id, task_id, attempt = item
            except (TypeError, ValueError):
                continue
            graph = self.workflows.get(workflow_id)
            run = graph.runs.get(task_id) if graph is not None else None
            key = task_key(workflow_id, task_id)
            listed.add(key)
            if (run is not None and run.state is TaskState.RUNNING and run.attempts == attempt
                    and run.worker_id == heartbeat.worker_id):
                self._unclaimed.pop(key, None)
                try:
                    self.registry.reserve(heartbeat.worker_id, key, graph.tasks[task_id].requirements)
                except PlacementError:
                    pass  # its resources changed; the task keeps running anyway
            elif (run is not None and run.state is TaskState.READY and run.attempts + 1 == attempt
                  and key in self.queue):
                # A dispatch the previous leader sent but never committed: adopt the run.
                self.queue.remove(key)
                self._adopt(graph, task_id, heartbeat.worker_id, attempt)
            elif key not in self._dispatching:
                cancel.append([workflow_id, task_id, attempt])
        self._requeue_unheld(heartbeat.worker_id, listed, now_ms)  # lost assignments hung tasks (chaos)
        self._dispatch()
        return HeartbeatAck(True, cancel)

    def _requeue_unheld(self, worker_id: str, listed: set, now_ms: int) -> None:
        """Requeue what runs on ``worker_id`` by the log but its heartbeats omitted for the grace period."""
        before, unheld = self._unheld.get(worker_id, {}), {}
        for key in self.registry.workers[worker_id].reservations:
            graph = self.workflows.get(split_task_key(key)[0])
            run = graph.runs.get(split_task_key(key)[1]) if graph is not None else None
            if key not in listed and key not in self._dispatching and run is not None \
                    and run.state is TaskState.RUNNING and run.worker_id == worker_id:
                unheld[key] = before.get(key, now_ms)
        self._unheld[worker_id] = unheld
        for key in [key for key, since_ms in unheld.items() if now_ms - since_ms > self.claim_grace_ms]:
            self._requeue(key, "its worker does not hold it", now_ms)

    def _adopt(self, graph, task_id: str, worker_id: str, attempt: int) -> None:
        key = task_key(graph.workflow_id, task_id)
        try:
            self.registry.reserve(worker_id, key, graph.tasks[task_id].requirements)
        except PlacementError:
            pass
        self._dispatching[key] = (worker_id, attempt)
        self.control.propose(Batch([DispatchTask(graph.workflow_id, task_id, attempt, worker_id, monotonic_ms())]))

    def _on_reports(self, reports: TasksFinished) -> Any:
        now_ms = monotonic_ms()
        commands = []
        succeeded = []
        for report in reports.reports:
            if self._runs_elsewhere(reports.worker_id, report):
                continue  # a deposed leader's dispatch; the attempt number was reissued elsewhere
            if self._free_slot(reports.worker_id, report) and report.ok:
                succeeded.append(report)
            if report.error == ERROR_CANCELLED:
                continue  # we cancelled it: a stale attempt or a cancelled workflow, not a failure
            if report.error == ERROR_DRAINING:
                commands.append(RequeueTask(report.workflow_id, report.task_id, report.attempt, ERROR_DRAINING, now_ms))
            else:
                commands.append(FinishTask(report.workflow_id, report.task_id, report.attempt, report.ok, now_ms,
                                           report.exit_code, report.result, report.error,
                                           report.stdout_tail, report.stderr_tail))
        if not commands:
            return ReportsAccepted(0)
        known_results: dict[str, dict] = {}
        for report in succeeded:
            known_results.setdefault(report.workflow_id, {})[report.task_id] = report.result
        placed = self._dependents_ready_on(succeeded, known_results, now_ms)
        assignments: dict[str, list[TaskAssignment]] = {}
        if placed:
            dispatches, assignments = self._assignments(placed, now_ms, known_results)
            commands.extend(dispatches)
        answer = self.defer()

        def committed(future) -> None:
            try:
                outcome = future.get(0)
            except Exception as exc:
                answer.fail("not_committed", str(exc))
                return
            if isinstance(outcome, Redirect):
                answer.resolve(outcome)
            else:
                answer.resolve(ReportsAccepted(len(commands)))

        self.control.propose(Batch(commands)).add_done_callback(committed)
        self._send_assignments(assignments)
        self._dispatch()
        return answer

    def _runs_elsewhere(self, worker_id: str, report: Any) -> bool:
        """Whether the reported attempt runs (or is dispatched) on another worker: not this run's to finish."""
        graph = self.workflows.get(report.workflow_id)
        run = graph.runs.get(report.task_id) if graph is not None else None
        dispatching = self._dispatching.get(task_key(report.workflow_id, report.task_id))
        if dispatching is not None:
            return dispatching[1] == report.attempt and dispatching[0] != worker_id
        return (run is not None and run.state is TaskState.RUNNING and run.attempts == report.attempt
                and run.worker_id != worker_id)

    def _free_slot(self, worker_id: str, report: Any) -> bool:
        """A worker that reports the current attempt of a running task has that slot free now:
        reuse it at once rather than after the report commits (the task's own state still waits
        for that). False for a report of anything else (stale, duplicate)."""
        key = task_key(report.workflow_id, report.task_id)
        graph = self.workflows.get(report.workflow_id)
        run = graph.runs.get(report.task_id) if graph is not None else None
        current = run is not None and run.state is TaskState.RUNNING and run.attempts == report.attempt \
            and run.worker_id == worker_id
        # A run can report before its own DispatchTask is applied (a hop faster than a commit).
        if current or self._dispatching.get(key) == (worker_id, report.attempt):
            self.registry.release(worker_id, key)
            return True
        return False

    def _on_tick(self) -> None:
        now_ms = monotonic_ms()
        for worker_id in self.registry.check_health(now_ms):
            self._worker_lost(worker_id, "worker missed its heartbeats")
        if self._unclaimed:
            expired = [key for key, deadline_ms in self._unclaimed.items() if deadline_ms <= now_ms]
            for key in expired:
                del self._unclaimed[key]
                self._requeue(key, "nobody claimed it after a leader change", now_ms)
        self._dispatch()

    def _worker_lost(self, worker_id: str, reason: str, unregister: bool = False) -> None:
        now_ms = monotonic_ms()
        for graph in self.workflows.graphs.values():
            if graph.is_workflow_completed():
                continue
            for task_id, run in graph.runs.items():
                if run.state is TaskState.RUNNING and run.worker_id == worker_id:
                    self._requeue(task_key(graph.workflow_id, task_id), reason, now_ms)
        if unregister:
            self.registry.unregister(worker_id)

    def _requeue(self, key: str, reason: str, now_ms: int) -> None:
        workflow_id, task_id = split_task_key(key)
        graph = self.workflows.get(workflow_id)
        if graph is None or graph.runs[task_id].state is not TaskState.RUNNING:
            return
        log.info("Task %s goes back to the queue: %s", task_id, reason)
        self.control.propose(RequeueTask(workflow_id, task_id, graph.runs[task_id].attempts, reason, now_ms))

    # ------------------------------------------------------------------ clients

    def _submission(self, workflow: Any) -> Any:
        """The SubmitWorkflow command for ``workflow``, or the ErrorRecord refusing it."""
        if not isinstance(workflow, Workflow):
            return ErrorRecord("invalid_workflow", "the request carries no workflow")
        try:
            check_structure(workflow)
        except WorkflowError as exc:
            return ErrorRecord("invalid_workflow", str(exc))
        if self.registry.workers:
            for task in workflow.tasks:
                if task.is_noop:
                    continue
                reason = self.registry.could_ever_fit(task.requirements)
                if reason:
                    return ErrorRecord("unplaceable", f"task {task.task_id!r} can never run here: {reason}")
        return SubmitWorkflow(workflow, monotonic_ms())

    def _answer_client(self, client_id: str, seq: int, make_body: Callable[[], Any]) -> Any:
        """Commit a client's command (``make_body()``: its body, or an ErrorRecord refusing it) and
        answer with its result. A command the session already answered gets that answer; a retry
        of one still in flight waits for the same commit: a big workflow can take longer to log
        than the client's per-try timeout, and each copy would cost as much as the first to
        check and log (the log would drop it as a duplicate only after committing it)."""
        status, previous = self.control.state.sessions.check(client_id, seq)
        if status == ClientSessions.DUPLICATE:
            return previous
        if status == ClientSessions.EXPIRED:
            return ErrorRecord("session_expired", f"seq {seq} is too old")
        session_key = (client_id, seq)
        commit = self._client_commits.get(session_key)
        if commit is None:
            body = make_body()
            if isinstance(body, ErrorRecord):
                return body
            commit = self._client_commits[session_key] = self.control.propose(ClientCommand(client_id, seq, body))
            commit.add_done_callback(lambda _: self._client_commits.pop(session_key, None))
        answer = self.defer()

        def done(future) -> None:
            try:
                answer.resolve(future.get(0))
            except Exception as exc:
                answer.fail(getattr(exc, "kind", "not_committed"), str(exc))

        commit.add_done_callback(done)
        return answer

    def workflow_status(self, workflow_id: str | None, tasks: bool = True) -> Any:
        if workflow_id is None:
            return [{"workflow_id": graph.workflow_id, "name": graph.workflow.name, "state": graph.state.value,
                     "progress": graph.progress()} for graph in self.workflows.graphs.values()]
        graph = self.workflows.get(workflow_id)
        if graph is None:
            return ErrorRecord("unknown_workflow", f"no workflow {workflow_id!r}")
        status = {"workflow_id": workflow_id, "name": graph.workflow.name, "state": graph.state.value,
                  "progress": graph.progress()}
        if not tasks:
            return status
        return {
            **status,
            "tasks": {task_id: {"state": run.state.value, "attempts": run.attempts, "worker": run.worker_id or None,
                                "exit_code": run.exit_code, "error": run.error or None,
                                "result": run.result, "stdout_tail": run.stdout_tail,
                                "stderr_tail": run.stderr_tail, "started_ms": run.started_ms,
                                "finished_ms": run.finished_ms}
                      for task_id, run in graph.runs.items()},
        }

    def workers_table(self) -> list[dict]:
        rows = []
        for worker_id, entry in self.registry.workers.items():
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
            })
        return rows
