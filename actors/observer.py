"""ObserverActor: what an operator sees of a master: metrics, events, and the snapshot document.

Role: one per master, pinned (on the transport thread, beside the RaftActor, the scheduler and
the lock actor). It only watches; it never proposes or changes anything. What it reads of the
actors beside it comes in ``ObserverSources``, read-only callables the master's composition
builds (it never looks another actor up), and the replicated state from the ControlPlane:

* It watches applied ``wf.`` and ``lock.`` commands and leadership changes (``Watch``), and on
  the leader counts them into runtime/metrics.py (dispatch latency from ready to assigned, run
  time, finished tasks, grants) and publishes events on the node's PUB socket, topics
  ``event.election``, ``event.worker``, ``event.task``, ``event.workflow``, ``event.lock``.
* After every transport round it reads the Raft core's indexes: commits seen, leader changes,
  snapshots, and how long a batch of proposals took from the leader's log to its commit.
* Every ``tick_s`` on the leader it compares the worker table with the last one: a worker that
  went offline is an event (``worker lost``) and a counter.
* ``snapshot()`` is the document ``/stats``, ``/metrics``, ``/health`` and ``agentflow top``
  (``OverviewRequest``) read; it is built here, on this thread.

Rules: bounded (the last ``EVENTS_KEPT`` events, ``workflow_limit`` workflow rows); nothing is
logged per task; task and lock figures count on the leader only (see runtime/metrics.py).
"""

from __future__ import annotations

import collections
import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable

from actors.control_plane import Applied, ControlPlane, LeadershipChanged
from protocols.workflow_run import TaskState
from protocols.workflow_table import DispatchTask, FinishTask, RequeueTask, SubmitWorkflow
from protocols.locks import Acquire, LockGranted, LockOutcome
from protocols.overview import (
    WORKFLOW_LIMIT,
    OverviewRequest,
    agent_rows,
    agents_summary,
    tasks_by_state,
    workflow_rows,
    workflows_by_state,
)
from protocols.wire import ErrorRecord, Tick
from runtime.actor import Actor
from runtime.metrics import MasterMetrics

EVENTS_KEPT = 50
REJOIN_GRACE_S = 3.0  # three heartbeats: how long a new leader takes to hear from every worker
PENDING_BATCHES_KEPT = 10_000  # proposal batches timed at once; older ones are not timed


@dataclass(frozen=True)
class ObserverSources:
    """Read-only views of the actors beside the observer, called on their (the transport) thread."""

    raft_core: Callable[[], Any]  # the RaftCore: leader_id, commit_index, last_index, first_index
    raft_status: Callable[[], dict]
    lock_clock_ms: Callable[[], int]  # the lock actor's clock (its leases' time)
    agent_stats: Callable[[], Any]  # the agent directory's per-agent message counters
    queue_stats: Callable[[int], Any]  # now_ms -> QueueStats (the leader's queue)
    scheduler_clock_ms: Callable[[], int]  # the scheduler's clock: the workflow table's and the queue's times
    workers_table: Callable[[], list]  # the leader's worker rows


class ObserverActor(Actor):
    def __init__(self, control: ControlPlane, sources: ObserverSources, metrics: MasterMetrics,
                 tick_s: float = 0.5) -> None:
        super().__init__()
        self.control = control
        self.sources = sources
        self.metrics = metrics
        self.tick_s = tick_s
        self.events: collections.deque[dict] = collections.deque(maxlen=EVENTS_KEPT)
        self._event_ids = itertools.count(1)
        self._timer_id: int | None = None
        self._leadership: tuple[bool, int] | None = None
        self._leader_since_s = 0.0
        self._workers: dict[str, str] = {}  # worker id -> status, at the last tick
        # What the last round left in the Raft core.
        self._leader_seen: str | None = None
        self._commit_seen = 0
        self._last_seen = 0
        self._first_seen = 0
        self._was_leader = False
        self._batches: collections.deque[tuple[int, int, float]] = collections.deque()  # (first, last, t)

    # ------------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        me = self.node.lookup(self.address)
        self.control.watch("wf.", me)
        self.control.watch("lock.", me)
        core = self.sources.raft_core()
        self._commit_seen, self._last_seen, self._first_seen = core.commit_index, core.last_index, core.first_index
        self.node.transport.add_end_of_round_hook(self._after_round)
        self._timer_id = self.node.every(self.tick_s, me, "observer")

    def on_stop(self) -> None:
        if self._timer_id is not None:
            self.node.cancel_timer(self._timer_id)

    # ------------------------------------------------------------------ messages

    def receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is Applied:
            if message.is_leader:
                self._on_applied(message.items)
            return None
        if kind is Tick:
            if self._was_leader:
                self._check_workers()
            return None
        if kind is LeadershipChanged:
            self._on_leadership(message.is_leader, message.term)
            return None
        if kind is OverviewRequest:
            return self.snapshot(message.workflow_limit)
        return ErrorRecord("unknown_message", kind.__name__)

    # ------------------------------------------------------------------ events

    def publish(self, kind: str, text: str, **fields: Any) -> None:
        event = {"id": f"{self.node.node_id}:{next(self._event_ids)}", "kind": kind, "text": text,
                 "node": self.node.node_id, "time_s": time.time(), **fields}
        self.events.append(event)
        self.node.publish(f"event.{kind}", event)

    def _on_leadership(self, is_leader: bool, term: int) -> None:
        previous, self._leadership = self._leadership, (is_leader, term)
        if previous == self._leadership:
            return  # told once per watch
        if is_leader:
            self._workers = {}
            self._leader_since_s = time.monotonic()
            self.publish("election", f"{self.node.node_id} became leader for term {term}", term=term)
        elif previous is not None and previous[0]:
            self.publish("election", f"{self.node.node_id} is no longer leader (term {term})", term=term)

    def _check_workers(self) -> None:
        now = {row["worker_id"]: row["status"] for row in self.sources.workers_table()}
        for worker_id, status in now.items():
            before = self._workers.get(worker_id)
            if before is None:
                # A new leader learns every worker again from its heartbeats: that is not news.
                if time.monotonic() - self._leader_since_s >= REJOIN_GRACE_S:
                    self.publish("worker", f"worker {worker_id} joined", worker=worker_id)
            elif status == "offline" and before != "offline":
                self.metrics.workers_lost.inc()
                self.publish("worker", f"worker {worker_id} lost (missed its heartbeats)", worker=worker_id)
            elif before == "offline" and status != "offline":
                self.publish("worker", f"worker {worker_id} is back", worker=worker_id)
        for worker_id in self._workers.keys() - now.keys():
            self.publish("worker", f"worker {worker_id} left", worker=worker_id)
        self._workers = now

    # ------------------------------------------------------------------ applied commands (leader)

    def _on_applied(self, items: list[tuple[int, Any, Any]]) -> None:
        metrics = self.metrics
        workflows = self.control.state.workflows
        for index, command, result in items:
            kind = type(command)
            if kind is Acquire or isinstance(result, LockOutcome):
                self._on_lock(index, command, result)
                continue
            if not isinstance(result, dict) or not result.get("ok"):
                continue
            if kind is SubmitWorkflow:
                metrics.workflows_submitted.inc()
            elif kind is DispatchTask:
                metrics.tasks_dispatched.inc()
                run = self._run(workflows, command)
                if run is not None and run.attempts == command.attempt and run.ready_ms is not None:
                    metrics.dispatch_latency.observe(max(0, command.now_ms - run.ready_ms) / 1000)
            elif kind is FinishTask:
                self._on_finish(workflows, command)
            elif kind is RequeueTask:
                metrics.tasks_requeued.inc()
            for workflow_id in result.get("finished", ()):
                graph = workflows.get(workflow_id)
                if graph is not None:
                    state = graph.state.value
                    metrics.workflows_finished.labels(state).inc()
                    self.publish("workflow", f"workflow {workflow_id} {state}", workflow=workflow_id, state=state)

    @staticmethod
    def _run(workflows, command: Any):
        graph = workflows.get(command.workflow_id)
        return graph.runs.get(command.task_id) if graph is not None else None

    def _on_finish(self, workflows, command: FinishTask) -> None:
        run = self._run(workflows, command)
        if run is None:
            return
        current = run.attempts == command.attempt
        if command.succeeded:
            self.metrics.tasks_finished.labels("completed").inc()
            if current and run.started_ms is not None:
                self.metrics.run_duration.observe(max(0, command.now_ms - run.started_ms) / 1000)
            return
        task = f"{command.workflow_id}/{command.task_id}"
        why = command.error or f"exit {command.exit_code}"
        if current and run.state is TaskState.FAILED:
            self.metrics.tasks_finished.labels("failed").inc()
            self.publish("task", f"task {task} failed: {why[:80]} (attempt {command.attempt}, no retry left)",
                         workflow=command.workflow_id, task=command.task_id)
        else:
            self.metrics.tasks_retried.inc()
            self.publish("task", f"task {task} failed: {why[:80]} (attempt {command.attempt}, retrying)",
                         workflow=command.workflow_id, task=command.task_id)

    def _on_lock(self, index: int, command: Any, outcome: Any) -> None:
        if not isinstance(outcome, LockOutcome):
            return
        grants = list(outcome.grants)
        reply = outcome.reply
        if type(command) is Acquire and isinstance(reply, LockGranted) and reply.token == index:
            grants.append(reply)  # a new lease (a holder's re-acquire keeps its older token)
            self.metrics.lock_acquire.observe(max(0, self.sources.lock_clock_ms() - command.now_ms) / 1000)
        for grant in grants:
            self.metrics.lock_grants.inc()
            self.publish("lock", f"lock {grant.key} granted to {grant.owner} (token {grant.token})", key=grant.key)

    # ------------------------------------------------------------------ the Raft core, once per round

    def _after_round(self) -> None:
        core = self.sources.raft_core()
        leader, commit, last, first = core.leader_id, core.commit_index, core.last_index, core.first_index
        is_leader = leader == self.node.node_id
        if leader is not None and leader != self._leader_seen:
            self._leader_seen = leader
            self.metrics.leader_changes.inc()
        if self._was_leader and not is_leader:
            failed = sum(end - max(start, commit + 1) + 1 for start, end, _ in self._batches if end > commit)
            if failed:
                self.metrics.proposals_failed.inc(failed)
            self._batches.clear()
        self._was_leader = is_leader
        if commit > self._commit_seen:
            self.metrics.proposals_committed.inc(commit - self._commit_seen)
            self._commit_seen = commit
            if self._batches:
                now = time.perf_counter()
                while self._batches and self._batches[0][1] <= commit:
                    self.metrics.commit.observe(now - self._batches.popleft()[2])
        if is_leader and last > self._last_seen and len(self._batches) < PENDING_BATCHES_KEPT:
            self._batches.append((self._last_seen + 1, last, time.perf_counter()))
        self._last_seen = last
        if first > self._first_seen:
            self.metrics.snapshots.inc()
        self._first_seen = first

    # ------------------------------------------------------------------ the snapshot document

    def snapshot(self, workflow_limit: int = WORKFLOW_LIMIT) -> dict:
        """This master's document: raft, transport counters, the replicated state's counts, and
        on the leader the soft state (queue, workers, workflow rows); the latest events."""
        core = self.sources.raft_core()
        raft = self.sources.raft_status()
        is_leader = raft["role"] == "leader"
        raft["snapshot_index"] = core.first_index - 1
        raft["proposals_pending"] = max(0, core.last_index - core.commit_index) if is_leader else 0
        leader, term = raft["leader"], raft["term"]
        if raft.get("disk_error"):
            reason = f"cannot write its Raft log, so it neither votes nor acknowledges: {raft['disk_error']}"
        elif raft.get("snapshot_error"):
            reason = (f"cannot load the leader's {raft['snapshot_error']}, so it neither votes nor acknowledges; "
                      "start it again to fetch a new snapshot")
        elif leader is None:
            reason = (f"no leader known in term {term}: an election is under way, "
                      "or this master is cut off from a majority of the masters")
        elif is_leader:
            reason = f"leads term {term}"
        else:
            reason = f"follows {leader} in term {term}"
        state = self.control.state
        lock_now_ms = self.sources.lock_clock_ms()
        agent_stats = self.sources.agent_stats()
        document = {
            "node_id": self.node.node_id, "kind": "master", "role": raft["role"], "leader": leader, "term": term,
            "serving": leader is not None and not raft.get("disk_error") and not raft.get("snapshot_error"),
            "reason": reason,
            "endpoint": self.node.endpoint, "pub_endpoint": self.node.pub_endpoint,
            "raft": raft, "counters": self.node.stats(), "connections": self.node.inbound_connections(),
            "tasks": tasks_by_state(state.workflows), "workflows": workflows_by_state(state.workflows),
            "locks": {"held": len(state.locks.list_locks(lock_now_ms)), "waiting": len(state.locks.waiting())},
            "agents": agent_rows(state.agents, agent_stats),
            "agents_summary": agents_summary(state.agents, agent_stats),
            "events": list(self.events),
        }
        if is_leader:
            table_now_ms = self.sources.scheduler_clock_ms()
            queue = self.sources.queue_stats(table_now_ms)
            rows = self.sources.workers_table()
            by_status = {status: 0 for status in ("active", "busy", "draining", "offline")}
            for row in rows:
                by_status[row["status"]] = by_status.get(row["status"], 0) + 1
            accepting = [row for row in rows if row["status"] in ("active", "busy")]
            document.update({
                "queue": {"total": queue.total, "by_priority": dict(queue.by_priority),
                          "oldest_wait_s": queue.oldest_wait_ms / 1000},
                "workers": {"by_status": by_status, "slots_total": sum(r["max_concurrent_tasks"] for r in accepting),
                            "slots_used": sum(r["running"] for r in accepting)},
                "worker_rows": rows,
                "workflow_rows": workflow_rows(state.workflows, table_now_ms, workflow_limit),
            })
        return document
