"""A leader's dispatch without actors: the DispatchState, the QueueService and the RegistryService
wired together synchronously, over a replicated state whose log commits when told to.

    sim = DispatchSim()
    sim.worker("w1", slots=2)
    sim.submit("wf", [task("a"), task("b", deps=["a"])])
    sim.finish("w1", "wf", "a")          # the report of the attempt w1 runs
    assert sim.running("w1") == ["wf/b"]

Instructions are carried out in the order the state gives them; the queue's and the registry's
replies go back to it at once (as the pinned actors do within one transport round). Proposals
commit when the instructions run out (``auto_commit``), or on ``commit()``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Any

from protocols.control import Batch, ClientCommand, ControlState
from protocols.workflow_spec import TaskNode, TaskResources, Workflow, task_key
from protocols.dispatch import DispatchConfig, DispatchState
from protocols.dispatch_messages import (
    Answer,
    Applied,
    Assign,
    Cancel,
    ClientRequest,
    Committed,
    Goodbye,
    Heartbeat,
    Hello,
    LeadershipChanged,
    Propose,
    ProposeClient,
    QueueQuery,
    Reports,
    RunningCaps,
    Tick,
    ToQueue,
    ToRegistry,
    WorkersQuery,
)
from protocols.registry import HealthCheckConfig, WorkerInfo, WorkerResources
from protocols.rounds import QueueService, RegistryService
from protocols.tasks import TaskFinished, WorkerHeartbeat
from protocols.wire import encode


def task(task_id: str, deps: tuple[str, ...] | list[str] = (), priority: str | int = "medium", *,
         cpu: float = 0.0, memory_mb: int = 0, gpu: int = 0, capabilities: tuple[str, ...] = (),
         group: str | None = None, retries: int = 0, command: str = "true",
         locality: list | None = None) -> TaskNode:
    from protocols.workflow_spec import priority_value

    return TaskNode(task_id, command=command, priority=priority_value(priority), dependencies=list(deps),
                    resources=TaskResources(cpu, memory_mb, gpu), retries=retries,
                    capabilities=list(capabilities), group=group, locality=locality)


class Ask:
    """The handle of an ask in the simulation: what it was answered with."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.done = False
        self.value: Any = None
        self.error: tuple | None = None


class DispatchSim:
    def __init__(self, config: DispatchConfig | None = None, health: HealthCheckConfig | None = None) -> None:
        config = config or DispatchConfig()
        if health is not None:
            config = dataclasses.replace(config, health=health)
        self.control = ControlState()
        self.dispatch = DispatchState(config)
        self.queue = QueueService(config.aging_ms_per_point)  # as the master composition hands them
        self.registry = RegistryService(config.health)
        self.now_ms = 0
        self.index = 0
        self.auto_commit = True
        self.proposals: list[Any] = []  # Propose / ProposeClient not committed yet
        self.assigned: dict[str, list] = collections.defaultdict(list)  # worker -> every assignment, in order
        self.cancelled: dict[str, list] = collections.defaultdict(list)
        self._latest: dict[str, dict] = collections.defaultdict(dict)  # worker -> task -> its last assignment
        self.rounds: list[list[str]] = []  # the keys each proposal dispatched, in order
        self.requests = collections.Counter()  # "queue" / "registry" requests sent
        self.seq = 0
        self.on_place: Any = None  # called with (request, reply) after each placement, to check it
        self.hold_queue_replies = False  # keep the queue's replies until release_replies()
        self.held_replies: list = []
        self.batching = False
        self.term = 0
        self.new_leader()

    def new_leader(self) -> None:
        """This state leads again, in the next term (a leader change seen from the new leader)."""
        self.term += 1
        self.handle(LeadershipChanged(True, self.control, self.now_ms, self.term))

    # ------------------------------------------------------------------ driving

    def handle(self, event: Any) -> None:
        self.dispatch.handle(event)
        if not self.batching:
            self._run(self.dispatch.flush())

    @contextlib.contextmanager
    def one_batch(self):
        """The events made inside are handled as one batch of messages: one flush at the end."""
        self.batching = True
        try:
            yield
        finally:
            self.batching = False
            self._run(self.dispatch.flush())

    def _run(self, instructions: list) -> None:
        work = collections.deque(instructions)
        while True:
            while work:
                self._carry_out(work.popleft(), work)
            if not (self.auto_commit and self.proposals):
                return
            work.extend(self._commit_all())

    def _carry_out(self, instruction: Any, work: collections.deque) -> None:
        kind = type(instruction)
        if kind is ToQueue:
            self.requests["queue"] += 1
            reply = self.queue.handle(instruction.request)
            if reply is not None and self.hold_queue_replies:
                self.held_replies.append(reply)  # answered later, after what comes meanwhile
            elif reply is not None:
                self.dispatch.handle(reply)
                work.extend(self.dispatch.flush())
        elif kind is ToRegistry:
            self.requests["registry"] += 1
            reply = self.registry.handle(instruction.request)
            if instruction.request.place_round and self.on_place is not None:
                self.on_place(instruction.request, reply)
            if reply is not None:
                self.dispatch.handle(reply)
                work.extend(self.dispatch.flush())
        elif kind is Propose or kind is ProposeClient:
            self.proposals.append(instruction)
            if kind is Propose:
                dispatched = [task_key(c.workflow_id, c.task_id) for c in instruction.commands
                              if type(c).__name__ == "DispatchTask"]
                if dispatched:
                    self.rounds.append(dispatched)
        elif kind is Assign:
            self.assigned[instruction.worker_id].extend(instruction.tasks)
            latest = self._latest[instruction.worker_id]
            for assignment in instruction.tasks:
                latest[(assignment.workflow_id, assignment.task_id)] = assignment
        elif kind is Cancel:
            self.cancelled[instruction.worker_id].extend(instruction.tasks)
        elif kind is Answer:
            ask = instruction.reply
            ask.done, ask.value, ask.error = True, instruction.value, instruction.error
        else:
            raise AssertionError(f"unexpected instruction {instruction!r}")

    def release_replies(self) -> None:
        replies, self.held_replies = self.held_replies, []
        for reply in replies:
            self.handle(reply)

    def commit(self) -> None:
        """Commit every proposal made so far (with ``auto_commit`` off)."""
        self._run(self._commit_all())

    def _commit_all(self) -> list:
        items = []
        proposals, self.proposals = self.proposals, []
        for proposal in proposals:
            self.index += 1
            if type(proposal) is Propose:
                _, results = self.control.apply(self.index, encode(Batch(proposal.commands)))
                items.extend((self.index, command, result) for command, result in zip(proposal.commands, results))
                for ask, value in proposal.answers:
                    ask.done, ask.value = True, value
            else:
                command, result = self.control.apply(self.index, encode(
                    ClientCommand(proposal.client_id, proposal.seq, proposal.body)))
                if command is not None:
                    items.append((self.index, command, result))
                self.dispatch.handle(Committed(proposal.client_id, proposal.seq, result))
        if items:
            self.dispatch.handle(Applied(items, self.now_ms))
        return self.dispatch.flush()

    # ------------------------------------------------------------------ the world

    def advance(self, ms: int) -> None:
        self.now_ms += ms
        self.handle(Tick(self.now_ms))

    def worker(self, worker_id: str, slots: int = 4, cpu: float = 4.0, memory_mb: int = 4096, gpus: int = 0,
               group: str = "default", capabilities: tuple[str, ...] = ()) -> Ask:
        info = WorkerInfo(worker_id, worker_id, group, "", list(capabilities), slots,
                          WorkerResources(cpu, memory_mb, memory_mb, gpus), f"tcp://{worker_id}:1")
        ask = Ask("hello")
        self.handle(Hello(info, ask, self.now_ms))
        return ask

    def heartbeat(self, worker_id: str, running: list | None = None, load: dict | None = None,
                  draining: bool = False) -> Ask:
        held = running if running is not None else [list(a.key) for a in self.holding(worker_id)]
        ask = Ask("heartbeat")
        self.handle(Heartbeat(WorkerHeartbeat(worker_id, held, load or {}, draining), ask, self.now_ms))
        return ask

    def caps(self, caps: dict[str, int]) -> None:
        """Tenants' caps on running tasks, as the master tells them when the quotas (re)load."""
        self.handle(RunningCaps(caps))

    def goodbye(self, worker_id: str) -> None:
        self.handle(Goodbye(worker_id, self.now_ms))

    def submit(self, workflow_id: str, tasks: list[TaskNode]) -> Ask:
        self.seq += 1
        ask = Ask("submit")
        self.handle(ClientRequest("submit", "client", self.seq, Workflow(workflow_id, workflow_id, tasks), ask,
                                  self.now_ms))
        return ask

    def cancel(self, workflow_id: str) -> Ask:
        self.seq += 1
        ask = Ask("cancel")
        self.handle(ClientRequest("cancel", "client", self.seq, workflow_id, ask, self.now_ms))
        return ask

    def reprioritize(self, workflow_id: str, task_id: str, priority: int) -> Ask:
        self.seq += 1
        ask = Ask("reprioritize")
        self.handle(ClientRequest("reprioritize", "client", self.seq, (workflow_id, task_id, priority), ask,
                                  self.now_ms))
        return ask

    def report(self, worker_id: str, reports: list[TaskFinished]) -> Ask:
        ask = Ask("reports")
        self.handle(Reports(worker_id, reports, ask, self.now_ms))
        return ask

    def finish(self, worker_id: str, workflow_id: str, task_id: str, ok: bool = True, result: Any = None,
               error: str = "") -> Ask:
        """Report the attempt of ``task_id`` that ``worker_id`` was last given."""
        given = self.given(worker_id, workflow_id, task_id)
        return self.report(worker_id, [TaskFinished(worker_id, workflow_id, task_id, given.attempt, ok,
                                                    0 if ok else 1, result, error, "", "", 1, given.term)])

    def finish_all(self, worker_id: str) -> list[str]:
        """Report every attempt ``worker_id`` holds as succeeded, in one batch; their keys."""
        held = self.holding(worker_id)
        self.report(worker_id, [TaskFinished(worker_id, a.workflow_id, a.task_id, a.attempt, True, 0, None, "",
                                             "", "", 1, a.term) for a in held])
        return [task_key(a.workflow_id, a.task_id) for a in held]

    def workers(self) -> list[dict]:
        ask = Ask("workers")
        self.handle(WorkersQuery(ask))
        return ask.value

    def queue_stats(self) -> dict:
        ask = Ask("queue")
        self.handle(QueueQuery(ask, self.now_ms))
        return ask.value

    # ------------------------------------------------------------------ looking

    def given(self, worker_id: str, workflow_id: str, task_id: str) -> Any:
        """The last assignment of ``task_id`` to ``worker_id``."""
        given = [a for a in self.assigned[worker_id] if (a.workflow_id, a.task_id) == (workflow_id, task_id)]
        assert given, f"{worker_id} was never given {workflow_id}/{task_id}"
        return given[-1]

    def attempt_on(self, worker_id: str, workflow_id: str, task_id: str) -> int:
        return self.given(worker_id, workflow_id, task_id).attempt

    def holding(self, worker_id: str) -> list:
        """The attempts assigned to ``worker_id`` that are still running on it, as the log says."""
        held = []
        latest = self._latest[worker_id]
        for task, assignment in list(latest.items()):
            graph = self.control.workflows.get(assignment.workflow_id)
            run = graph.runs[assignment.task_id] if graph else None
            if run is not None and run.state.value == "running" and run.attempts == assignment.attempt \
                    and run.worker_id == worker_id:
                held.append(assignment)
            elif run is None or run.state.is_finished:
                del latest[task]
        return held

    def running(self, worker_id: str) -> list[str]:
        return [task_key(a.workflow_id, a.task_id) for a in self.holding(worker_id)]

    def state_of(self, workflow_id: str, task_id: str) -> str:
        return self.control.workflows.get(workflow_id).runs[task_id].state.value
