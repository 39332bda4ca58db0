"""The scheduler's decisions as a pure state machine: events in, instructions out.

Role: ``DispatchState`` is what the SchedulerActor runs (in the style of distributed's
worker_state_machine): the actor makes an event (protocols/dispatch_messages.py) of everything
that arrives, calls ``handle(event)`` for each and ``flush()`` once per batch of messages, and
carries out the instructions it gets back: ``Propose`` to the Raft log, ``Assign``/``Cancel``
to workers, ``Answer`` an ask, ``ToQueue``/``ToRegistry`` (one request each at most per flush,
protocols/rounds.py). No clock, socket or thread; it reads the replicated state it is handed
(the workflow table, the client sessions) and never writes it.

Rules:

* Every change of a task's state is a committed command that this state proposes; it reacts
  to what they did (``Applied``). An assignment leaves with its DispatchTask proposal (one
  commit less per hop), so its run may start on a dependency's completion that never commits;
  only the run of the dispatch the log commits, (attempt, leader's term), can complete the task.
  If the leader dies before the entry commits, the next cancels that run and runs the task
  again (at least once), even under the same attempt number: the term tells the runs apart.
* Every dispatch takes the highest-ranked ready tasks that fit, in the queue's order
  (priority, aging, retry penalty, then FIFO), on every path: a round, the dispatch that leaves
  with a report's completion (the tasks it makes ready join the queue's order as *transient*
  candidates, so a chain costs one commit per hop), a requeue, a new leader's rebuild. One
  that fits nowhere does not stop those behind it; a round looks at ``MAX_SCANNED`` at most
  (or 4 per free slot). Nor does a task of a tenant at its cap on running tasks (``RunningCaps``,
  protocols/tenant_caps.py): it waits apart, at no cost to a round, until one of its tenant's
  tasks reports (or, after a raised cap, the next round).
* Rounds: one in flight at a time (take from the queue, place with the registry, then one
  Batch entry of finishes and DispatchTasks, one AssignTasks per worker); what arrives
  meanwhile waits for the next. A reported attempt frees its slot at once. A round that could
  place nothing is not retried until something changed (``blocked``): aging never reorders
  queued tasks, so a tick alone cannot.
* Soft state lives on the leader (what is being dispatched, where tasks run, the free slots).
  A new leader rebuilds the queue from the replicated states, learns workers from their
  heartbeats, requeues running tasks nobody claims within ``claim_grace_ms``.
* A task runs on a worker; another kind (an agent's) would be an instruction of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from protocols.assignments import DEFAULT_MAX_RESULT_BYTES, TaskShapes, assignment, candidate, finish_command
from protocols.client_commands import ClientCommands, SubmissionLimits
from protocols.dispatch_messages import (Answer, Applied, Assign, Cancel, ClientRequest, Committed, Goodbye,
    Heartbeat, Hello, LeadershipChanged, Propose, QueueQuery, Reports, RunningCaps, Tick, ToQueue, ToRegistry,
    WorkersQuery)
from protocols.queue import DEFAULT_AGING_MS_PER_POINT, order_key
from protocols.registry import HealthCheckConfig
from protocols.retention import RetentionPolicy
from protocols.rounds import (DispatchRound, Queued, QueueDepthBound, QueueReply, QueueRequest, RegistryReply,
    RegistryRequest)
from protocols.running import CANCEL, LOST, RunningIndex, held_attempts, requeue_commands, runs_elsewhere, runs_there
from protocols.tenant_caps import TenantCaps
from protocols.tasks import (ERROR_CANCELLED, ERROR_DRAINING, ERROR_INPUTS_MISSING, HeartbeatAck,
    ReportsAccepted, TaskAssignment, TaskFinished, WorkerWelcome, attempt_key)
from protocols.workflow_run import TaskState
from protocols.workflow_spec import split_task_key, task_key
from protocols.workflow_table import DispatchTask, FinishTask, ForgetWorkflow, ReprioritizeTask, RequeueTask

MAX_SCANNED = 64

scheduler_log = logging.getLogger("agentflow.scheduler")


@dataclass(slots=True)
class DispatchConfig:
    claim_grace_ms: int = 3000  # running tasks nobody claims by then (new leader) or held (worker) are requeued
    # The workers' heartbeat interval (told in their welcome) and how many missed ones make a
    # worker offline: the RegistryActor's health checks take the same config.
    health: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES  # a larger result fails its task
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)  # which finished workflows to forget
    aging_ms_per_point: int = DEFAULT_AGING_MS_PER_POINT  # the queue's (for ordering without it)
    limits: SubmissionLimits = field(default_factory=SubmissionLimits)  # what one submission may bring


class DispatchState:
    """The scheduler's decisions; see the module docstring."""

    def __init__(self, config: DispatchConfig | None = None) -> None:
        self.config = config or DispatchConfig()
        self.is_leader = False
        self.term = 0  # the Raft term this state leads in (stamped on its dispatches)
        self.control: Any = None
        self._next_id = 0
        self._queue_depth = QueueDepthBound()  # (a new leader's reset keeps its count)
        self.now_ms = 0  # the latest time an event brought: a round's (its dispatches are stamped with it)
        self.shapes = TaskShapes()
        self.caps: TenantCaps | None = None  # tenants' caps on running tasks, and their counts (None: no caps)
        self._reset()

    def _reset(self) -> None:
        self.addresses: dict[str, str] = {}  # workers known to this leader -> where they listen
        self.dispatching: dict[str, tuple[str, int]] = {}  # key -> (worker, attempt), proposed, not applied
        self.unclaimed: dict[str, int] = {}  # running task key -> deadline_ms (after a leader change)
        self.running = RunningIndex()  # where each running task runs, as applied
        self.ship_inputs: set[str] = set()  # tasks to send with every input (their worker had lost some)
        self.released: set[str] = set()  # tasks whose slot their report freed, their finish not applied yet
        self.clients = ClientCommands(self.config.limits)
        self.forgetting: set[str] = set()  # workflows whose ForgetWorkflow is on its way
        self.queries: dict[int, Any] = {}  # token -> the ask waiting for the queue or registry
        self.free_slots = 0  # the registry's last word, plus the slots released since
        self._queue_depth.reset()
        self.held = 0  # of the queued tasks, those of capped tenants without room (the queue's last word)
        self.blocked = False  # the last round could place nothing and nothing changed since
        self.scan = 0  # how many candidates the next round looks at, beyond the free slots
        self.round: DispatchRound | None = None  # the round in flight
        self.next = DispatchRound()  # what the next round carries
        self.wanted = False
        self._out: list = []
        self._queue_request: QueueRequest | None = None
        self._registry_request: RegistryRequest | None = None

    # ------------------------------------------------------------------ the interface

    def handle(self, event: Any) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not a dispatch event: {type(event).__name__}")
        now_ms = getattr(event, "now_ms", 0)
        if now_ms > self.now_ms:
            self.now_ms = now_ms
        handler(self, event)

    def flush(self) -> list:
        """The instructions made since the last flush, in order; the queue's and the registry's
        requests last (at most one each)."""
        if self.is_leader and self.wanted and self.round is None:
            self._start_round()
        out, self._out = self._out, []
        if self._queue_request is not None:
            request = self._queue_request
            self._queue_depth.sent(request)
            out.append(ToQueue(request))
            self._queue_request = None
        request = self._registry_request
        # Releases wait for the placement of a round under way (they go first in it): one
        # message to the registry per round, not two.
        if request is not None and (self.round is None or self.round.candidates or request.answered):
            out.append(ToRegistry(request))
            self._registry_request = None
        return out

    @property
    def workflows(self):
        return self.control.workflows

    @property
    def queued(self) -> int:
        """An upper bound on the queue's depth (0: nothing is queued)."""
        return self._queue_depth.bound(self._queue_request)

    # ------------------------------------------------------------------ outgoing requests

    def _to_queue(self) -> QueueRequest:
        if self._queue_request is None:
            self._queue_request = QueueRequest()
        return self._queue_request

    def _to_registry(self, now_ms: int) -> RegistryRequest:
        if self._registry_request is None:
            self._registry_request = RegistryRequest(now_ms=now_ms)
        else:
            self._registry_request.now_ms = max(self._registry_request.now_ms, now_ms)
        return self._registry_request

    def _token(self) -> int:
        self._next_id += 1
        return self._next_id

    def _release(self, worker_id: str, key: str, now_ms: int, held: bool = True) -> None:
        """Free a task's reservation (``worker_id`` "": wherever it is held). Counted as a free
        slot at once: the registry does not answer releases (an upper bound; its next answer
        corrects it). ``held``: the task held a slot of its tenant's (not a placement unused)."""
        request = self._to_registry(now_ms)
        request.claims.pop(key, None)  # (older news than the release)
        request.releases.append((worker_id, key))
        self.free_slots += 1
        self.blocked = False
        if held and self.caps is not None:
            self.caps.discard(key)

    def _queued(self, graph, task_id: str, now_ms: int, finishing: dict | None = None) -> Queued:
        run = graph.runs[task_id]
        return Queued(candidate(graph, task_id, self.shapes, finishing), graph.tasks[task_id].priority, now_ms, run.failures)

    def _queue_ready(self, items: list[Queued]) -> None:
        if items:
            self._to_queue().enqueue.extend(items)
            self.blocked = False
            self.wanted = True

    # ------------------------------------------------------------------ leadership

    def _on_leadership(self, event: LeadershipChanged) -> None:
        self.clients.abandon(self._out)
        for current in (self.round, self.next):
            if current is not None:
                for reply, _ in current.answers:
                    self._out.append(Answer(reply, error=("not_committed", "leadership changed; retry")))
        for reply in self.queries.values():
            self._out.append(Answer(reply, error=("not_leader", "leadership changed; retry")))
        self._reset()
        self.is_leader, self.term = event.is_leader, event.term
        self.control = event.control
        self._to_queue().reset = True
        self._to_registry(event.now_ms).reset = True
        if not self.is_leader:
            return
        now_ms = event.now_ms
        ready: list[Queued] = []
        for graph in self.workflows.graphs.values():
            if graph.is_workflow_completed():
                continue
            ready.extend(self._queued(graph, task_id, now_ms) for task_id in graph.get_ready_tasks())
            for task_id, run in graph.runs.items():
                if run.state is TaskState.RUNNING:
                    key = task_key(graph.workflow_id, task_id)
                    self.unclaimed[key] = now_ms + self.config.claim_grace_ms
                    self.running.running(key, run.worker_id or "", run.attempts)
        if self.caps is not None:
            self._on_running_caps(RunningCaps(self.caps.caps))  # counted again, from the log
        self._queue_ready(ready)

    # ------------------------------------------------------------------ applied commands

    def _on_applied(self, event: Applied) -> None:
        if not self.is_leader:
            return
        now_ms = event.now_ms
        workflows = self.workflows
        cancels: dict[str, list[list]] = {}
        removes: list[str] = []
        ready: list[Queued] = []
        for _, command, result in event.items:
            if type(result) is not dict:
                continue
            kind = type(command)
            if kind is DispatchTask:
                key = task_key(command.workflow_id, command.task_id)
                ours = self.dispatching.pop(key, None) is not None
                if not result.get("ok"):
                    self._release(command.worker_id, key, now_ms)
                    cancels.setdefault(command.worker_id, []).append(
                        [command.workflow_id, command.task_id, command.attempt])
                    continue
                self.running.running(key, command.worker_id, command.attempt)
                if not ours:
                    removes.append(key)  # queued here before a previous leader's dispatch of it committed
                    if self.caps is not None and key not in self.released:
                        self.caps.add(key)
            elif (kind is FinishTask or kind is RequeueTask) and result.get("ok"):
                # Only the current attempt frees its reservation (a stale report must not free the
                # slot of a newer attempt of the same task on another worker).
                key = task_key(command.workflow_id, command.task_id)
                if key in self.released:
                    self.released.discard(key)  # its slot was freed when its report came
                else:
                    self._release("", key, now_ms)
                self.running.not_running(key)
            elif kind is FinishTask or kind is RequeueTask:
                self.released.discard(task_key(command.workflow_id, command.task_id))
            elif kind is ReprioritizeTask and result.get("ok"):
                self._to_queue().reprioritize.append((task_key(command.workflow_id, command.task_id),
                                                      command.priority))
                self.blocked = False
            elif kind is ForgetWorkflow:
                self.forgetting.discard(command.workflow_id)
            for key in result.get("released", ()):
                removes.append(key)
                self._let_go(key, cancels, now_ms)
                self.running.not_running(key)
                self.ship_inputs.discard(key)
            for key in result.get("ready", ()):
                if key in self.dispatching:
                    continue  # dispatched in the same entry (a transient candidate)
                workflow_id, task_id = split_task_key(key)
                graph = workflows.get(workflow_id)
                if graph is not None:
                    ready.append(self._queued(graph, task_id, now_ms))
        if removes:
            self._to_queue().remove.extend(removes)
        self._queue_ready(ready)
        for worker_id, keys in cancels.items():
            if self.addresses.get(worker_id):
                self._out.append(Cancel(worker_id, self.addresses[worker_id], keys))
        self.wanted = True

    def _let_go(self, key: str, cancels: dict[str, list[list]], now_ms: int) -> None:
        """A task left ready/running without finishing (cancelled, skipped): free its worker."""
        workflow_id, task_id = split_task_key(key)
        graph = self.workflows.get(workflow_id)
        run = graph.runs.get(task_id) if graph is not None else None
        if run is None or not run.worker_id:
            return
        cancels.setdefault(run.worker_id, []).append([workflow_id, task_id, run.attempts])
        self._release("", key, now_ms)

    # ------------------------------------------------------------------ workers

    def _on_hello(self, event: Hello) -> None:
        info = event.info
        self.addresses[info.worker_id] = info.address
        self._to_registry(event.now_ms).hellos.append(info)
        self._out.append(Answer(event.reply, WorkerWelcome(info.worker_id, self.config.health.heartbeat_interval_ms)))
        self.blocked = False
        self.wanted = True

    def _on_heartbeat(self, event: Heartbeat) -> None:
        heartbeat, now_ms = event.heartbeat, event.now_ms
        worker_id = heartbeat.worker_id
        if worker_id not in self.addresses:
            self._out.append(Answer(event.reply, HeartbeatAck(False, [])))
            return
        request = self._to_registry(now_ms)
        request.heartbeats.append((worker_id, heartbeat.load if type(heartbeat.load) is dict else {},
                                   bool(heartbeat.draining)))
        cancel = []
        for verdict, workflow_id, task_id, number, graph in held_attempts(
                self.workflows, worker_id, heartbeat.running, self.dispatching):
            key = task_key(workflow_id, task_id)
            if verdict is CANCEL:
                cancel.append([workflow_id, task_id, number])
                continue
            if verdict is LOST:  # (the same number, dispatched by this leader from now on, is spared)
                cancel.append([workflow_id, task_id, number, self.term])
                continue
            self.unclaimed.pop(key, None)  # CLAIM
            if key not in self.released:  # (a reported one's slot is free already)
                request.claims[key] = (worker_id, self.shapes.of(graph.tasks[task_id]))
        self._out.append(Answer(event.reply, HeartbeatAck(True, cancel)))
        self._reconcile(worker_id, heartbeat.running, now_ms)

    def _reconcile(self, worker_id: str, held: list, now_ms: int) -> None:
        """Requeue what the log says runs on this worker and it no longer holds (protocols/running.py)."""
        if worker_id not in self.running.on_worker:
            return
        listed = {key for key in map(attempt_key, held) if key is not None}
        self._requeue(self.running.lost(worker_id, listed, now_ms, self.config.claim_grace_ms),
                      "its worker does not have it", now_ms)

    def _on_goodbye(self, event: Goodbye) -> None:
        if event.worker_id in self.addresses:
            self._worker_lost(event.worker_id, "worker said goodbye", event.now_ms)
            self._to_registry(event.now_ms).goodbyes.append(event.worker_id)
            del self.addresses[event.worker_id]

    def _on_reports(self, event: Reports) -> None:
        worker_id, now_ms = event.worker_id, event.now_ms
        workflows = self.workflows
        upcoming = self.next
        counted = 0
        for report in event.reports:
            if type(report) is not TaskFinished:
                continue
            key = task_key(report.workflow_id, report.task_id)
            graph = workflows.get(report.workflow_id)
            run = graph.runs.get(report.task_id) if graph is not None else None
            dispatching = self.dispatching.get(key)
            if runs_elsewhere(run, dispatching, worker_id, report.attempt):
                continue
            # The current attempt's slot is free now, before its completion commits (a run can
            # even report before its own DispatchTask is applied: a hop faster than a commit).
            # A run of a deposed leader's dispatch of the same number is not current.
            current = run is not None and (
                (dispatching == (worker_id, report.attempt) and report.term == self.term)
                or (dispatching is None and runs_there(run, worker_id, report.attempt)
                    and report.term == run.dispatch_term))
            if current:
                self._release(worker_id, key, now_ms)
                self.released.add(key)
            if report.error == ERROR_CANCELLED:
                continue  # we cancelled it: a stale attempt or a cancelled workflow, not a failure
            counted += 1
            if report.error == ERROR_DRAINING or report.error == ERROR_INPUTS_MISSING:
                # It never ran: back to the queue without a failure (sent again with every input).
                if report.error == ERROR_INPUTS_MISSING:
                    self.ship_inputs.add(key)
                upcoming.commands.append(RequeueTask(report.workflow_id, report.task_id, report.attempt,
                                                     report.error, now_ms))
                continue
            finish = finish_command(report, now_ms, self.config.max_result_bytes)
            upcoming.commands.append(finish)
            if current and finish.succeeded:  # its dependents become candidates of the next round
                for child in upcoming.unblock(graph, report.task_id, report.result, worker_id):
                    key = task_key(graph.workflow_id, child)
                    if key not in self.dispatching:
                        upcoming.transient[key] = self._queued(graph, child, now_ms,
                                                               upcoming.finishing[graph.workflow_id])
        if not counted:
            self._out.append(Answer(event.reply, ReportsAccepted(0)))
            return
        upcoming.answers.append((event.reply, ReportsAccepted(counted)))
        upcoming.now_ms = max(upcoming.now_ms, now_ms)
        self.wanted = True

    def _on_tick(self, event: Tick) -> None:
        if not self.is_leader:
            return
        now_ms = event.now_ms
        self._to_registry(now_ms).check_health = True
        if self.unclaimed:
            expired = [key for key, deadline_ms in self.unclaimed.items() if deadline_ms <= now_ms]
            for key in expired:
                del self.unclaimed[key]
            self._requeue(expired, "nobody claimed it after a leader change", now_ms)
        if not self.blocked and self.free_slots > 0 and self.queued > self.held:
            self.wanted = True
        forget = self.config.retention.to_forget(self.workflows.finished, now_ms, self.forgetting)
        if forget:
            self.forgetting.update(forget)
            self._out.append(Propose([ForgetWorkflow(workflow_id) for workflow_id in forget]))

    def _worker_lost(self, worker_id: str, reason: str, now_ms: int) -> None:
        self._requeue(self.running.tasks_on(worker_id), reason, now_ms)

    def _requeue(self, keys: list[str], reason: str, now_ms: int) -> None:
        """Propose, in one entry, a RequeueTask of each of these tasks that still runs."""
        requeues = requeue_commands(self.workflows, keys, reason, now_ms)
        if requeues:
            self._out.append(Propose(requeues))

    # ------------------------------------------------------------------ rounds

    def _start_round(self) -> None:
        self.wanted = False
        upcoming = self.next
        transient = list(upcoming.transient.values())
        take = min(max(self.free_slots, self.scan), self.queued + len(transient))
        if self.free_slots <= 0 or take <= 0 or (self.blocked and not transient):
            if upcoming.commands:
                self._out.append(Propose(upcoming.commands, upcoming.answers))
                self.next = DispatchRound()
            return
        upcoming.round_id = self._token()
        upcoming.offered = take
        upcoming.now_ms = self.now_ms
        self.round, self.next = upcoming, DispatchRound()
        if self.queued == 0:
            # Nothing waits in the queue (an upper bound of 0): the transient candidates are the
            # whole order, and go to the registry without a trip through the queue (two hops less
            # on each hop of a chain). Ordered by the queue's own rule, ties in arrival order.
            aging = self.config.aging_ms_per_point
            transient.sort(key=lambda item: order_key(item.priority, item.now_ms, item.retries, aging))
            if self.caps is not None:
                transient = self.caps.within(transient)
            upcoming.direct = True
            upcoming.candidates = [item.candidate for item in transient[:take]]
            request = self._to_registry(upcoming.now_ms)
            request.place_round, request.place = upcoming.round_id, upcoming.candidates
            return
        request = self._to_queue()
        request.take_round, request.take_count, request.transient = upcoming.round_id, take, transient
        if self.caps is not None:
            request.allowance = self.caps.allowance()

    def _on_queue_reply(self, reply: QueueReply) -> None:
        self._queue_depth.replied(reply)
        if reply.stats_token and reply.stats_token in self.queries:
            self._out.append(Answer(self.queries.pop(reply.stats_token), reply.stats))
        current = self.round
        if not reply.take_round or current is None or reply.take_round != current.round_id:
            return
        self.held = reply.held
        current.candidates = reply.candidates
        if not reply.candidates:
            self._complete_round(current, RegistryReply(free_slots=self.free_slots, place_round=current.round_id))
            return
        request = self._to_registry(current.now_ms)
        request.place_round, request.place = current.round_id, reply.candidates

    def _on_registry_reply(self, reply: RegistryReply) -> None:
        if reply.free_slots > self.free_slots:
            self.blocked = False
            self.wanted = True
        self.free_slots = reply.free_slots
        for worker_id in reply.lost:
            self._worker_lost(worker_id, "worker missed its heartbeats", reply.now_ms)
        if reply.fit_token:
            self.clients.fit_checked(reply.fit_token, reply.fit_problems, self._out)
        if reply.table_token:
            waiting = self.queries.pop(reply.table_token, None)
            if waiting is not None:
                self._out.append(Answer(waiting, reply.table))
        current = self.round
        if reply.place_round and current is not None and reply.place_round == current.round_id:
            self._complete_round(current, reply)

    def _complete_round(self, current: DispatchRound, reply: RegistryReply) -> None:
        self.round = None
        workflows = self.workflows
        dispatches: list[DispatchTask] = []
        assignments: dict[str, list[TaskAssignment]] = {}
        now_ms = current.now_ms
        debug = scheduler_log.isEnabledFor(logging.DEBUG)
        caps, refused = self.caps, set()
        for placement in reply.placed:
            key = placement.key
            workflow_id, task_id = split_task_key(key)
            graph = workflows.get(workflow_id)
            run = graph.runs.get(task_id) if graph is not None else None
            wanted = run is not None and key not in self.dispatching and (
                run.state is TaskState.READY or (run.state is TaskState.PENDING and key in current.transient))
            if not wanted or (caps is not None and not caps.admit(key)):
                self._release(placement.worker_id, key, now_ms, held=False)
                if wanted:
                    refused.add(key)  # its tenant is at its cap (since the take): back to the queue
                continue
            attempt = run.attempts + 1
            self.dispatching[key] = (placement.worker_id, attempt)
            dispatches.append(DispatchTask(workflow_id, task_id, attempt, placement.worker_id, now_ms, self.term))
            if debug:
                scheduler_log.debug("Task %s dispatched to %s", key, placement.worker_id)
            assignments.setdefault(placement.worker_id, []).append(
                assignment(graph, task_id, attempt, self.term, placement.worker_id, placement.gpus,
                           current.finishing.get(workflow_id), ship_all=key in self.ship_inputs))
            self.ship_inputs.discard(key)
        placed = {placement.key for placement in reply.placed}
        if refused:
            placed -= refused
        returning = [candidate.key for candidate in current.candidates
                     if candidate.key not in placed and candidate.key not in current.transient]
        if current.candidates and not current.direct:  # (a direct round borrowed nothing)
            request = self._to_queue()  # at once, so that the queue's stats are exact when it is idle
            request.settle_round, request.settle_return = current.round_id, returning
        commands = current.commands + dispatches
        if commands:
            self._out.append(Propose(commands, current.answers))
        for worker_id, tasks in assignments.items():
            address = self.addresses.get(worker_id, "")
            self._out.append(Assign(worker_id, address, tasks))
        # What next: more to place, a wider look past candidates that fit nowhere, or wait for a change.
        if reply.unplaced and self.free_slots > 0:
            wider = min(max(MAX_SCANNED, 4 * self.free_slots), 2 * current.offered, self.queued - self.held)
            if wider > current.offered:
                self.scan = wider
                self.wanted = True
            else:
                self.scan = 0
                self.blocked = True
        else:
            self.scan = 0
            if self.free_slots > 0 and self.queued > self.held:
                self.wanted = True
        if self.next.commands or self.next.transient:
            self.wanted = True

    # ------------------------------------------------------------------ clients and queries

    def _on_client(self, event: ClientRequest) -> None:
        workflows = self.control.workflows
        fit_check = self.clients.request(event, self.control.sessions, bool(self.addresses), self._out, self._token,
                                         len(workflows.graphs) - len(workflows.finished))
        if fit_check is not None:
            request = self._to_registry(event.now_ms)
            request.fit_token, request.fit_checks = fit_check

    def _on_committed(self, event: Committed) -> None:
        self.clients.committed(event, self._out)

    def _on_workers_query(self, event: WorkersQuery) -> None:
        token = self._token()
        self.queries[token] = event.reply
        self._to_registry(0).table_token = token

    def _on_queue_query(self, event: QueueQuery) -> None:
        token = self._token()
        self.queries[token] = event.reply
        request = self._to_queue()
        request.stats_token, request.now_ms = token, event.now_ms

    def _on_running_caps(self, event: RunningCaps) -> None:
        holding = [key for key in (*self.running.keys(), *self.dispatching) if key not in self.released]
        self.caps = TenantCaps(event.caps, holding) if event.caps else None
        if self.is_leader:
            self._to_queue().capped = list(self.caps.caps) if self.caps is not None else []
            self.held, self.blocked, self.wanted = 0, False, True


_HANDLERS = {event: getattr(DispatchState, "_on_" + name) for event, name in (
    (LeadershipChanged, "leadership"), (Applied, "applied"), (Hello, "hello"), (Heartbeat, "heartbeat"),
    (Goodbye, "goodbye"), (Reports, "reports"), (Tick, "tick"), (ClientRequest, "client"), (Committed, "committed"),
    (WorkersQuery, "workers_query"), (QueueQuery, "queue_query"), (QueueReply, "queue_reply"),
    (RegistryReply, "registry_reply"), (RunningCaps, "running_caps"))}
