"""SchedulerActor: runs workflows on workers, from the leader, through the Raft log.

Role: the I/O around the dispatch state (protocols/dispatch.py), which makes every decision.
It turns what arrives (workers' hellos, heartbeats and reports, clients' requests, applied
commands, leadership changes, ticks, the QueueActor's and RegistryActor's replies) into events;
after each batch of messages it carries out the state's instructions: proposals to the
RaftActor, assignments and cancels to workers, answers to asks, and at most one request each to
the QueueActor and the RegistryActor. The master composition tells it the tenants' caps on
running tasks (``RunningCaps``) when the quotas load and reload. The leader answers status
reads from the replicated table (protocols/views.py); a follower answers workers and clients
with a Redirect to the leader (status too: a follower still catching up would call an
acknowledged workflow unknown).

Rules:

* Spawned pinned, like the RaftActor, the QueueActor and the RegistryActor: a dispatch round
  (queue, registry, proposal) runs within one transport round, without a thread hand-off, and
  the Raft entry it proposes shares that round's SQLite commit. It never blocks. It reads the
  replicated state through the ``ControlPlane`` the master hands it (same thread), and proposes
  and watches only through it.
* Time: the clock it stamps commands with is the machine's monotonic clock, moved ahead when it
  becomes the leader if the workflow table's latest time is later (another machine's clock), as
  the LockActor's is: every time in the table, and the ages retention looks at, stay on one
  timeline that never goes back.
* Nothing is logged per task above debug.
"""

from __future__ import annotations

import time
from typing import Any

from actors.control_plane import Applied, ControlPlane, LeadershipChanged
from protocols import dispatch_messages as events
from protocols.control import (
    Batch,
    CancelWorkflowRequest,
    ClientCommand,
    QueueStatsRequest,
    ReprioritizeRequest,
    SubmitWorkflowRequest,
    WorkersRequest,
    WorkflowStatusRequest,
)
from protocols.dispatch import DispatchConfig, DispatchState
from protocols.names import QUEUE_ACTOR, REGISTRY_ACTOR, WORKER_ACTOR
from protocols.registry import WorkerInfo
from protocols.rounds import QueueReply, RegistryReply
from protocols.tasks import AssignTasks, CancelTasks, TasksFinished, WorkerGoodbye, WorkerHeartbeat, WorkerHello
from protocols.views import forgotten_document, workflow_document, workflow_list
from protocols.wire import EncodeError, ErrorRecord, Redirect, Tick, encode
from runtime.actor import Actor
from runtime.log import get_logger

log = get_logger("scheduler")

_FROM_WORKERS_AND_CLIENTS = (WorkerHello, WorkerHeartbeat, TasksFinished, SubmitWorkflowRequest,
                             CancelWorkflowRequest, ReprioritizeRequest, WorkersRequest, QueueStatsRequest,
                             WorkflowStatusRequest)


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class SchedulerActor(Actor):
    def __init__(self, control: ControlPlane, tick_s: float = 0.1, config: DispatchConfig | None = None) -> None:
        super().__init__()
        self.control = control
        self.tick_s = tick_s
        self.state = DispatchState(config)
        self._clock_offset_ms = 0
        self._timer_id: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        self.me = self.node.lookup(self.address)
        self.queue = self.node.lookup((self.node.node_id, QUEUE_ACTOR))
        self.registry = self.node.lookup((self.node.node_id, REGISTRY_ACTOR))
        self.control.watch("wf.", self.me)
        self._timer_id = self.node.every(self.tick_s, self.me, "scheduler")

    def on_stop(self) -> None:
        if self._timer_id is not None:
            self.node.cancel_timer(self._timer_id)

    def now_ms(self) -> int:
        return monotonic_ms() + self._clock_offset_ms

    @property
    def workflows(self):
        return self.control.state.workflows

    # ------------------------------------------------------------------ messages

    def handle_batch(self, messages: list) -> None:
        super().handle_batch(messages)
        self._carry_out(self.state.flush())

    def receive(self, message: Any) -> Any:
        kind = type(message)
        state = self.state
        if kind is QueueReply or kind is RegistryReply or kind is events.Committed or kind is events.RunningCaps:
            state.handle(message)
            return None
        if kind is Applied:
            state.handle(events.Applied(message.items, self.now_ms()))
            if message.is_leader:
                self._log_finished(message.items)
            return None
        if kind is Tick:
            state.handle(events.Tick(self.now_ms()))
            return None
        if kind is LeadershipChanged:
            return self._on_leadership(message)
        if kind is WorkerGoodbye:
            if state.is_leader:
                state.handle(events.Goodbye(message.worker_id, self.now_ms()))
            return None
        if kind not in _FROM_WORKERS_AND_CLIENTS:
            return ErrorRecord("unknown_message", kind.__name__)
        if not state.is_leader:
            return self.control.redirect()
        if kind is WorkflowStatusRequest:
            return self.workflow_status(message.workflow_id, message.tasks, message.summary)
        return self._from_worker_or_client(kind, message)

    def _from_worker_or_client(self, kind: type, message: Any) -> Any:
        reply = self.defer()
        now_ms = self.now_ms()
        if kind is TasksFinished:
            event: Any = events.Reports(message.worker_id, message.reports, reply, now_ms)
        elif kind is WorkerHeartbeat:
            event = events.Heartbeat(message, reply, now_ms)
        elif kind is WorkerHello:
            if not isinstance(message.info, WorkerInfo):
                return ErrorRecord("bad_request", "a hello carries a WorkerInfo")
            event = events.Hello(message.info, reply, now_ms)
        elif kind is SubmitWorkflowRequest:
            event = events.ClientRequest("submit", message.client_id, message.seq, message.workflow, reply, now_ms)
        elif kind is CancelWorkflowRequest:
            event = events.ClientRequest("cancel", message.client_id, message.seq, message.workflow_id, reply, now_ms)
        elif kind is ReprioritizeRequest:
            event = events.ClientRequest("reprioritize", message.client_id, message.seq,
                                         (message.workflow_id, message.task_id, message.priority), reply, now_ms)
        elif kind is WorkersRequest:
            event = events.WorkersQuery(reply)
        else:
            event = events.QueueQuery(reply, now_ms)
        self.state.handle(event)
        return reply

    def _on_leadership(self, message: LeadershipChanged) -> None:
        if message.is_leader:
            # Never behind the table's latest time (see the module docstring).
            self._clock_offset_ms += max(0, self.workflows.clock_ms - self.now_ms())
        self.state.handle(events.LeadershipChanged(message.is_leader, self.control.state, self.now_ms(), message.term))
        if message.is_leader:
            log.info("Scheduler on %s leads: %d ready tasks queued, %d running tasks to be claimed",
                     self.node.node_id, self.state.queued, len(self.state.unclaimed))

    def _log_finished(self, items: list) -> None:
        for _, _, result in items:
            if type(result) is dict and result.get("finished"):
                for workflow_id in result["finished"]:
                    graph = self.workflows.get(workflow_id)
                    if graph is not None:
                        log.info("Workflow %s %s", workflow_id, graph.state.value)

    # ------------------------------------------------------------------ instructions

    def _carry_out(self, instructions: list) -> None:
        for instruction in instructions:
            kind = type(instruction)
            if kind is events.ToRegistry:
                self.registry.tell(instruction.request)
            elif kind is events.ToQueue:
                self.queue.tell(instruction.request)
            elif kind is events.Propose:
                self._propose(instruction)
            elif kind is events.Assign:
                self._tell_worker(instruction.worker_id, instruction.address,
                                  AssignTasks(instruction.worker_id, instruction.tasks))
            elif kind is events.Answer:  # a refusal is counted by reason, as Actor counts those it returns
                if instruction.error is None:
                    if type(instruction.value) is ErrorRecord:
                        self.node.count(f"rejected_{instruction.value.kind}")
                    instruction.reply.resolve(instruction.value)
                else:
                    self.node.count(f"rejected_{instruction.error[0]}")
                    instruction.reply.fail(*instruction.error)
            elif kind is events.Cancel:
                self._tell_worker(instruction.worker_id, instruction.address,
                                  CancelTasks(instruction.worker_id, instruction.tasks))
            elif kind is events.ProposeClient:
                self._propose_client(instruction)

    def _tell_worker(self, worker_id: str, address: str, message: Any) -> None:
        if not address:
            self.node.count("scheduler_unknown_worker")
            return
        self.node.ref(address, WORKER_ACTOR, worker_id).tell(message)

    def _propose(self, instruction: events.Propose) -> None:
        proposal = self.control.propose(Batch(instruction.commands))
        answers = instruction.answers
        if not answers:
            return  # the outcome shows in what is applied

        def committed(future) -> None:
            try:
                outcome = future.get(0)
            except Exception as exc:
                for reply, _ in answers:
                    reply.fail("not_committed", str(exc))
                return
            for reply, value in answers:
                reply.resolve(outcome if isinstance(outcome, Redirect) else value)

        proposal.add_done_callback(committed)

    def _propose_client(self, instruction: events.ProposeClient) -> None:
        client_id, seq, me = instruction.client_id, instruction.seq, self.me

        def committed(future) -> None:  # on the RaftActor's thread: hand the outcome back as a message
            try:
                me.tell(events.Committed(client_id, seq, future.get(0)))
            except Exception as exc:
                me.tell(events.Committed(client_id, seq, None, (getattr(exc, "kind", "not_committed"), str(exc))))

        # Encoded here, once: the size is what the log would hold, and the RaftActor logs these bytes.
        try:
            command = encode(ClientCommand(client_id, seq, instruction.body))
        except EncodeError as exc:
            me.tell(events.Committed(client_id, seq, None, ("bad_request", str(exc))))
            return
        refusal = self.state.config.limits.size_refusal(instruction.body, len(command))
        if refusal is not None:
            me.tell(events.Committed(client_id, seq, None, (refusal.kind, refusal.message)))
            return
        self.control.propose(command).add_done_callback(committed)

    # ------------------------------------------------------------------ reads

    def workflow_status(self, workflow_id: str | None, tasks: bool = True, summary: bool = False) -> Any:
        table = self.workflows
        if workflow_id is None:
            return workflow_list(table)
        graph = table.get(workflow_id)
        if graph is not None:
            return workflow_document(graph, tasks, summary)
        tombstone = table.forgotten.get(workflow_id)
        if tombstone is not None:
            return forgotten_document(workflow_id, tombstone, tasks)
        return ErrorRecord("unknown_workflow", f"no workflow {workflow_id!r}")
