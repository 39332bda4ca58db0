"""WorkerActor: a worker's side of the task protocol (protocols/tasks.py).

    node.spawn(WorkerActor, config, name=WORKER_ACTOR, pinned=True).tell(Begin(on_drained))
    agentflow worker --master-url tcp://127.0.0.1:6767     # a worker process (agentflow/worker.py)

Rules of this module:

* The actor is named ``"worker"`` on a node whose id is the worker id. It talks to the actor
  ``"scheduler"`` on whichever master answers: it follows a ``Redirect`` to the leader, and
  moves on to the next configured master when the current one does not answer in time.
* It is spawned pinned: it runs on the transport thread, so an assignment reaches the task
  process and a report leaves for the master without a thread hand-off (measured: 1.41 ->
  1.32 ms per hop of a chain). So it never blocks: asks are answered through future callbacks
  that tell the actor an ``_Answered`` message, at most one ask of each kind (hello,
  heartbeat) is in flight, and task processes are watched by the executor's reaper thread,
  which tells the actor ``_Finished`` batches. The longest it holds the thread is starting a
  task's process (a fork and exec).
* Every heartbeat tick: WorkerHello until welcomed, else a WorkerHeartbeat; plus the reports
  not yet accepted. Reports are sent as soon as they exist (up to
  ``MAX_REPORT_BATCHES_IN_FLIGHT`` batches wait for their commits at once) and kept until
  ``ReportsAccepted``.
* At most ``max_concurrent_tasks`` task processes run at once; further assignments wait in
  arrival order. An attempt already held (waiting, running or reported) is not taken twice;
  one assigned again while its report is on its way runs again once that report is answered.
* Draining (first SIGTERM or SIGINT): no new work; waiting and newly assigned attempts are
  reported as not run (``ERROR_DRAINING``); running ones finish and are reported; then a
  ``WorkerGoodbye`` and exit 0 (exit 1 if some reports were still unaccepted after
  ``report_grace_s``). A second signal kills the running tasks and exits 1. The goodbye is a
  tell, so it is best effort: a master that misses it sees the heartbeats stop.
* Memory pressure: each heartbeat samples the memory available to it (runtime/resources.py,
  ``MemoryWatch``) and says whether it is under pressure; entering it retires the idle task
  processes (and keeps none after its task) until it recovers; the scheduler sends nothing new.
* Results of its tasks from 16 KiB up are kept (``ResultCache``, 256 MiB by default, oldest
  out first) for the later tasks the scheduler places here on purpose (data locality): their
  assignments name them in ``local_inputs`` instead of carrying them.
* Nothing is logged per task at info level.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from protocols.assignments import DEFAULT_RESULT_CACHE_BYTES, ResultCache
from protocols.names import SCHEDULER_ACTOR
from protocols.registry import WorkerInfo
from protocols.tasks import (
    ERROR_DRAINING,
    ERROR_INPUTS_MISSING,
    AssignTasks,
    AttemptKey,
    CancelTasks,
    HeartbeatAck,
    ReportsAccepted,
    RunningQuery,
    RunningTasks,
    TaskAssignment,
    TaskFinished,
    TasksFinished,
    WorkerGoodbye,
    WorkerHeartbeat,
    WorkerHello,
    WorkerWelcome,
    cancel_item,
)
from protocols.wire import Redirect, Tick
from runtime.actor import Actor
from runtime.agent_tasks import AgentTaskRunner
from runtime.executor import DEFAULT_KILL_GRACE_S, TaskExecutor, finished_now
from runtime.future import AskTimeout, RemoteError
from runtime.log import get_logger
from runtime.node import Ref
from runtime.resources import MemoryWatch, current_load, default_pressure_threshold_mb

log = get_logger("worker")

MAX_REPORTS_PER_BATCH = 1000
MAX_REPORT_BATCHES_IN_FLIGHT = 8
MAX_REDIRECTS_PER_TICK = 4  # stale leaders pointing at each other must not make us spin


@dataclass
class WorkerConfig:
    """What a WorkerActor needs. ``ask_timeout_s`` None means twice the heartbeat interval
    (at least 1 s); ``report_grace_s`` bounds how long a drained worker keeps trying to
    deliver its last reports."""

    info: WorkerInfo
    master_endpoints: list[str]
    heartbeat_interval_s: float = 1.0
    ask_timeout_s: float | None = None
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    report_grace_s: float = 10.0
    result_cache_bytes: int = DEFAULT_RESULT_CACHE_BYTES  # results kept for later tasks here (locality)
    memory_pressure_mb: int | None = None  # under this much available memory: pressure (None: 10%, <= 512 MB)
    on_reports: Callable[[list[TaskFinished]], None] | None = None  # metrics: each finished batch


# Messages the worker tells itself (local only, never on the wire).


class Drain:
    """Finish what runs, take nothing new, then say goodbye (the first SIGTERM)."""


@dataclass
class Begin:
    on_drained: Callable[[bool], None] | None


@dataclass
class _Finished:
    reports: list[TaskFinished]


@dataclass
class _Answered:
    kind: str  # "hello", "heartbeat" or "reports"
    endpoint: str
    keys: tuple  # the attempt keys a reports batch carried
    value: Any
    error: BaseException | None


class WorkerActor(Actor):
    """Runs the tasks masters assign to this worker; see the module docstring for the rules."""

    def __init__(self, config: WorkerConfig) -> None:
        super().__init__()
        self.config = config
        self.info = config.info
        self.worker_id = config.info.worker_id
        self.max_concurrent_tasks = max(1, config.info.max_concurrent_tasks)
        self.master_endpoints = list(config.master_endpoints)
        self.master_index = 0
        self.master_endpoint = self.master_endpoints[0]
        self.heartbeat_interval_s = config.heartbeat_interval_s
        self.registered = False
        self.draining = False
        self.drained = False
        self.waiting: collections.deque[TaskAssignment] = collections.deque()
        self.running: dict[AttemptKey, TaskAssignment] = {}
        self.unacked: dict[AttemptKey, TaskFinished] = {}  # reports not yet accepted, in order
        self.results = ResultCache(config.result_cache_bytes)
        memory_mb = config.info.resources.memory_mb
        self.memory = MemoryWatch(memory_mb, config.memory_pressure_mb if config.memory_pressure_mb is not None
                                  else default_pressure_threshold_mb(memory_mb))
        self.in_flight = {"hello": False, "heartbeat": False}  # reports count their batches instead
        self.reports_sent: set = set()  # keys of unacknowledged reports on their way to a master
        self.report_batches_in_flight = 0
        self.rerun_after_ack: dict[AttemptKey, TaskAssignment] = {}  # see _on_assign
        self.redirects_this_tick = 0
        self.report_deadline_s: float | None = None
        self.executor: TaskExecutor | None = None
        self.self_ref: Ref | None = None
        self.timer_id: int | None = None
        self.on_drained: Callable[[bool], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def on_stop(self) -> None:
        if self.timer_id is not None:
            self.node.cancel_timer(self.timer_id)
        if self.executor is not None:
            self.executor.stop()

    def _begin(self, message: Begin) -> None:
        self.on_drained = message.on_drained
        self.self_ref = self.node.lookup(self.address)
        self_ref = self.self_ref
        def on_finished(reports: list[TaskFinished]) -> None:
            self_ref.tell(_Finished(reports))

        self.executor = TaskExecutor(
            self.worker_id, on_finished, kill_grace_s=self.config.kill_grace_s, call_slots=self.max_concurrent_tasks,
        ).start()
        if self.node.master_endpoints:  # a worker that knows its cluster runs agent tasks too
            self.executor.agent_runner = AgentTaskRunner(self.worker_id, self.node, on_finished)
        self.timer_id = self.node.every(self.heartbeat_interval_s, self_ref, "heartbeat")
        self._send_hello()

    @property
    def ask_timeout_s(self) -> float:
        if self.config.ask_timeout_s is not None:
            return self.config.ask_timeout_s
        return max(1.0, 2 * self.heartbeat_interval_s)

    # ------------------------------------------------------------------ dispatch

    def receive(self, message: Any) -> Any:
        if isinstance(message, Tick):
            return self._on_tick()
        if isinstance(message, _Finished):
            return self._on_finished(message.reports)
        if isinstance(message, _Answered):
            return self._on_answered(message)
        if isinstance(message, AssignTasks):
            return self._on_assign(message)
        if isinstance(message, CancelTasks):
            if message.worker_id == self.worker_id:
                self._cancel(message.tasks)
            return None
        if isinstance(message, RunningQuery):
            return RunningTasks(self.worker_id, self.held())
        if isinstance(message, Drain):
            return self._on_drain()
        if isinstance(message, Begin):
            return self._begin(message)
        self.node.count("worker_unexpected_messages")
        log.debug("Worker %s ignores a %s", self.worker_id, type(message).__name__)
        return None

    # ------------------------------------------------------------------ tasks

    def _held_keys(self):
        """Every attempt this worker holds: waiting, running, or reported but not accepted (a
        finished attempt leaves ``running`` before its report enters ``unacked``)."""
        yield from (task.key for task in self.waiting)
        yield from self.running
        yield from self.unacked

    def held(self) -> list[list]:
        return [list(key) for key in self._held_keys()]

    def _on_assign(self, message: AssignTasks) -> None:
        if message.worker_id != self.worker_id:
            self.node.count("worker_misaddressed_assignments")
            log.warning("Worker %s got tasks meant for %s; ignoring them", self.worker_id, message.worker_id)
            return
        held = set(self._held_keys())
        refused: list[TaskFinished] = []
        for task in message.tasks:
            if not isinstance(task, TaskAssignment):
                continue
            key = task.key
            if key in held:
                # Held, yet assigned again by a later leader: the first dispatch never committed
                # (its run may have used results the cluster never committed either; its report
                # will be refused), and the same attempt number came back. Run it again once
                # the run held has been reported and that report answered, or the task hangs.
                # The same dispatch again is a duplicate: the attempt is already ours.
                self._assigned_again(task)
                continue
            held.add(key)
            self._take(task, refused)
        self._start_waiting(refused)

    def _assigned_again(self, task: TaskAssignment) -> None:
        key = task.key
        for index, waiting in enumerate(self.waiting):
            if waiting.key == key:  # not started: run the newer dispatch instead
                if task.term > waiting.term:
                    self.waiting[index] = task
                return
        held = self.unacked.get(key) or self.running.get(key)
        if held is None:
            return  # refused a moment ago (draining, inputs missing): that report answers it
        planned = self.rerun_after_ack.get(key)
        if task.term > held.term and (planned is None or task.term > planned.term):
            self.rerun_after_ack[key] = task

    def _take(self, task: TaskAssignment, refused: list[TaskFinished]) -> None:
        """Queue an attempt to run, its local inputs filled in; or report it not run: draining,
        or one of its local inputs is gone."""
        if task.local_inputs:
            task = self._with_local_inputs(task, refused)
            if task is None:
                return
        if self.draining:
            refused.append(finished_now(self.worker_id, task, False, ERROR_DRAINING))
        else:
            self.waiting.append(task)

    def _with_local_inputs(self, task: TaskAssignment, refused: list[TaskFinished]) -> TaskAssignment | None:
        """The assignment with the results it names in ``local_inputs`` taken from this worker's
        cache; None (and an ERROR_INPUTS_MISSING report: it is sent again in full) if one is gone."""
        inputs = dict(task.inputs)
        for dependency in task.local_inputs:
            if (task.workflow_id, dependency) not in self.results:
                refused.append(finished_now(self.worker_id, task, False, ERROR_INPUTS_MISSING))
                return None
            inputs[dependency] = self.results.get(task.workflow_id, dependency)
        return replace(task, inputs=inputs, local_inputs=[])

    def _start_waiting(self, reports: list[TaskFinished]) -> None:
        """Start waiting attempts while slots are free; report the ones that ended at once."""
        assert self.executor is not None
        while self.waiting and len(self.running) < self.max_concurrent_tasks:
            task = self.waiting.popleft()
            report = self.executor.run(task)
            if report is None:
                self.running[task.key] = task
            else:
                reports.append(report)
        if reports:
            self._add_reports(reports)

    def _on_finished(self, reports: list[TaskFinished]) -> None:
        if self.config.on_reports is not None:
            self.config.on_reports(reports)
        for report in reports:
            self.running.pop(report.key, None)
            if report.ok and report.result is not None:
                self.results.put(report.workflow_id, report.task_id, report.result)
        self._add_reports(reports)
        self._start_waiting([])
        self._check_drained()

    def _add_reports(self, reports: list[TaskFinished]) -> None:
        for report in reports:
            self.unacked[report.key] = report
        self._send_reports()

    def _cancel(self, items: list) -> None:
        below = dict(cancel_item(item) for item in items)  # key -> cancel runs of terms below this
        below.pop(None, None)
        if not below:
            return

        def cancelled(task: TaskAssignment) -> bool:
            return task.key in below and task.term < below[task.key]

        # A cancelled attempt that has not started needs no report: the master gave it up.
        self.waiting = collections.deque(task for task in self.waiting if not cancelled(task))
        for key in below:
            planned = self.rerun_after_ack.get(key)
            if planned is not None and cancelled(planned):
                del self.rerun_after_ack[key]
            task = self.running.get(key)
            if task is not None and cancelled(task) and self.executor is not None:
                self.executor.cancel(key)
        self._check_drained()

    # ------------------------------------------------------------------ draining

    def _on_drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("Worker %s draining: %d running, %d waiting given back",
                 self.worker_id, len(self.running), len(self.waiting))
        refused = [finished_now(self.worker_id, task, False, ERROR_DRAINING) for task in self.waiting]
        self.waiting.clear()
        if refused:
            self._add_reports(refused)
        if self.registered:
            self._send_heartbeat()  # tell the master now, so it stops assigning
        self._check_drained()

    def _check_drained(self) -> None:
        if not self.draining or self.drained or self.running or self.waiting:
            return
        clean = True
        if self.unacked:
            now_s = time.monotonic()
            if self.report_deadline_s is None:
                self.report_deadline_s = now_s + self.config.report_grace_s
            if now_s < self.report_deadline_s:
                return  # the next accepted batch or tick checks again
            clean = False
            log.warning("Worker %s gives up on %d unaccepted reports", self.worker_id, len(self.unacked))
        self.drained = True
        self.node.ref(self.master_endpoint, SCHEDULER_ACTOR).tell(WorkerGoodbye(self.worker_id))
        log.info("Worker %s drained; goodbye", self.worker_id)
        if self.on_drained is not None:
            self.on_drained(clean)

    # ------------------------------------------------------------------ talking to masters

    def _on_tick(self) -> None:
        self.redirects_this_tick = 0
        if not self.registered:
            self._send_hello()
        else:
            self._send_heartbeat()
            self._send_reports()
        self._check_drained()

    def _ask_master(self, kind: str, message: Any, keys: tuple = ()) -> None:
        endpoint = self.master_endpoint
        future = self.node.ref(endpoint, SCHEDULER_ACTOR).ask(message, self.ask_timeout_s)
        self_ref = self.self_ref
        assert self_ref is not None

        def answered(done) -> None:  # runs on the transport thread: hand over, nothing more
            try:
                value, error = done.get(0), None
            except Exception as exc:
                value, error = None, exc
            self_ref.tell(_Answered(kind, endpoint, keys, value, error))

        future.add_done_callback(answered)

    def _send_hello(self) -> None:
        if not self.in_flight["hello"] and not self.drained:
            self.in_flight["hello"] = True
            self._ask_master("hello", WorkerHello(self.info))

    def _send_heartbeat(self) -> None:
        if not self.in_flight["heartbeat"] and not self.drained:
            was_pressed = self.memory.under_pressure
            load = current_load(len(self.running), self.memory)
            if self.memory.under_pressure != was_pressed:
                self._on_memory_pressure(load["memory_available_mb"])
            self.in_flight["heartbeat"] = True
            self._ask_master("heartbeat", WorkerHeartbeat(self.worker_id, self.held(), load, self.draining))

    def _on_memory_pressure(self, available_mb: int) -> None:
        pressed = self.memory.under_pressure
        retired = self.executor.recycle_processes(pressed) if self.executor is not None else 0
        if pressed:
            log.info("Worker %s under memory pressure (%d MB available, under %d MB): %d idle task processes "
                     "retired, no new tasks until it recovers", self.worker_id, available_mb,
                     self.memory.threshold_mb, retired)
        else:
            log.info("Worker %s recovered from memory pressure (%d MB available)", self.worker_id, available_mb)

    def _send_reports(self) -> None:
        """Send the reports not on their way yet, in batches; up to MAX_REPORT_BATCHES_IN_FLIGHT wait
        for their commit at once, so finished tasks never queue behind one commit's latency."""
        if not self.registered:
            return
        unsent = [report for key, report in self.unacked.items() if key not in self.reports_sent]
        for start in range(0, len(unsent), MAX_REPORTS_PER_BATCH):
            if self.report_batches_in_flight >= MAX_REPORT_BATCHES_IN_FLIGHT:
                return
            batch = unsent[start:start + MAX_REPORTS_PER_BATCH]
            keys = tuple(report.key for report in batch)
            self.reports_sent.update(keys)
            self.report_batches_in_flight += 1
            self._ask_master("reports", TasksFinished(self.worker_id, batch), keys)

    def _on_answered(self, answer: _Answered) -> None:
        if answer.kind == "reports":
            self.report_batches_in_flight -= 1
            accepted = answer.error is None and isinstance(answer.value, ReportsAccepted)
            reruns = []
            for key in answer.keys:
                self.reports_sent.discard(key)  # accepted: gone below; otherwise: sent again
                if accepted:
                    self.unacked.pop(key, None)
                    if key in self.rerun_after_ack:
                        reruns.append(self.rerun_after_ack.pop(key))
            if reruns:
                refused: list[TaskFinished] = []
                for rerun in reruns:
                    self._take(rerun, refused)
                self._start_waiting(refused)
        else:
            self.in_flight[answer.kind] = False
        if answer.error is not None:
            self._next_master(answer.endpoint, answer.error)
            self._check_drained()
            return
        value = answer.value
        if isinstance(value, Redirect):
            self._follow(value, answer)
        elif answer.kind == "hello" and isinstance(value, WorkerWelcome):
            self._on_welcome(value, answer.endpoint)
        elif answer.kind == "heartbeat" and isinstance(value, HeartbeatAck):
            if not value.known:
                log.info("Master at %s does not know worker %s; registering again", answer.endpoint, self.worker_id)
                self.registered = False
                self._send_hello()
            self._cancel(list(value.cancel))
        elif answer.kind == "reports" and isinstance(value, ReportsAccepted):
            self._send_reports()
        else:
            self.node.count("worker_unexpected_answers")
            log.warning("Master at %s answered a %s with %r", answer.endpoint, answer.kind, value)
        self._check_drained()

    def _on_welcome(self, welcome: WorkerWelcome, endpoint: str) -> None:
        self.registered = True
        master_id = next((node_id for node_id, known in self.node.peers.items() if known == endpoint), endpoint)
        log.info("Worker %s registered with master %s", self.worker_id, master_id)
        interval_s = welcome.heartbeat_interval_ms / 1000.0
        if interval_s > 0 and abs(interval_s - self.heartbeat_interval_s) > 1e-6 and self.self_ref is not None:
            self.heartbeat_interval_s = interval_s
            if self.timer_id is not None:
                self.node.cancel_timer(self.timer_id)
            self.timer_id = self.node.every(interval_s, self.self_ref, "heartbeat")
        self._send_heartbeat()
        self._send_reports()

    def _follow(self, redirect: Redirect, answer: _Answered) -> None:
        leader = redirect.leader_endpoint
        if leader is None or leader == answer.endpoint:
            return  # no leader yet: ask again on the next tick
        self.master_endpoint = leader
        self.redirects_this_tick += 1
        if self.redirects_this_tick > MAX_REDIRECTS_PER_TICK:
            return
        if answer.kind == "hello" or not self.registered:
            self._send_hello()
        elif answer.kind == "heartbeat":
            self._send_heartbeat()
        else:
            self._send_reports()

    def _next_master(self, endpoint: str, error: BaseException) -> None:
        """The master at ``endpoint`` did not answer (or failed): try the next one."""
        if endpoint != self.master_endpoint:
            return  # already moved on
        self.master_index = (self.master_index + 1) % len(self.master_endpoints)
        self.master_endpoint = self.master_endpoints[self.master_index]
        reason = "no answer" if isinstance(error, AskTimeout) else str(error)
        level = log.info if isinstance(error, (AskTimeout, RemoteError)) else log.warning
        level("Worker %s: master at %s failed (%s); next: %s", self.worker_id, endpoint, reason[:200],
              self.master_endpoint)
