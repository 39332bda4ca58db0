"""The records scheduler and workers exchange about tasks, and the rules of that conversation.

Rules of this module:

* It is pure: records and small helpers only; the worker side is ``actors/worker.py`` (with
  ``runtime/executor.py`` doing the processes), the master side is the SchedulerActor.
* An *attempt key* ``[workflow_id, task_id, attempt]`` names one run of one task; lists of them
  travel in ``running``, ``cancel`` and ``CancelTasks.tasks``. A leader that loses a dispatch
  before it commits leaves the attempt number to the next leader, so an assignment also carries
  the dispatching leader's ``term``, and its report the same: (attempt, term) is the dispatch.
  A worker holding an attempt that a later term assigns again runs it again (for that term)
  once the run it holds has been reported.
* Scheduler -> worker: ``AssignTasks`` (tell, several tasks per message) and ``CancelTasks``
  (tell) to the actor named ``"worker"``; ``RunningQuery`` (ask) -> ``RunningTasks``.
* Worker -> scheduler (the actor named ``"scheduler"`` on the leader), every one an ask:
  ``WorkerHello`` -> ``WorkerWelcome``; ``WorkerHeartbeat`` -> ``HeartbeatAck``;
  ``TasksFinished`` -> ``ReportsAccepted`` once the completions are committed. A master that is
  not the leader answers any of them with ``protocols.wire.Redirect``. ``WorkerGoodbye`` is a
  tell on a clean shutdown.
* Delivery of reports is at-least-once: the worker keeps every report until a
  ``ReportsAccepted`` answers the batch that carried it, and sends what is left again on its
  next heartbeat tick. Only the current attempt may complete a task; the master drops the rest.
* A worker's ``running`` (in heartbeats and ``RunningTasks``) lists every attempt it holds:
  waiting for a free slot, running, or finished with its report not yet accepted. So a new
  leader never requeues an attempt whose report is still on its way.
* A task assigned to a draining worker is answered at once by a ``TaskFinished`` with
  ``ok=False``, ``exit_code=None`` and ``error == ERROR_DRAINING``: it never ran, and the
  scheduler requeues it without counting a failure.
* ``local_inputs`` names dependencies whose results the worker keeps itself (it ran them: data
  locality), sent without their values. A worker that no longer has one answers at once with
  ``error == ERROR_INPUTS_MISSING`` (not run, requeued without a failure, sent again in full).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from protocols.workflow_spec import task_kind
from protocols.registry import WorkerInfo
from protocols.wire import record

ERROR_DRAINING = "worker draining"
ERROR_AGENT_UNSUPPORTED = "this worker runs no agent tasks (it was started without the masters to find agents through)"
ERROR_CANCELLED = "cancelled"
ERROR_INPUTS_MISSING = "inputs no longer on this worker"

DEFAULT_HEARTBEAT_INTERVAL_MS = 1000
TAIL_BYTES = 4096  # how much of a task's stdout and of its stderr a report carries

AttemptKey = tuple[str, str, int]
"""(workflow_id, task_id, attempt): one run of one task. On the wire it is a 3-item list."""


def attempt_key(item: Any) -> AttemptKey | None:
    """An attempt key from a wire value ``[workflow_id, task_id, attempt]``; None if malformed."""
    if not isinstance(item, (list, tuple)) or len(item) != 3:
        return None
    workflow_id, task_id, attempt = item
    if not isinstance(workflow_id, str) or not isinstance(task_id, str):
        return None
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        return None
    return (workflow_id, task_id, attempt)


def cancel_item(item: Any) -> tuple[AttemptKey | None, float]:
    """(attempt key, term) from an item of a cancel list: ``[workflow_id, task_id, attempt]``
    cancels the attempt whatever dispatched it (term: infinity); ``[..., attempt, term]`` only a
    run that a leader of an earlier term dispatched (a new leader's cancel of a lost dispatch
    must not kill the same attempt number it has dispatched since). (None, 0) if malformed."""
    term: float = float("inf")
    if isinstance(item, (list, tuple)) and len(item) == 4:
        item, term = item[:3], item[3]
        if not isinstance(term, int) or isinstance(term, bool):
            return None, 0
    key = attempt_key(item)
    return (key, term) if key is not None else (None, 0)


# --------------------------------------------------------------------------- scheduler -> worker


@record("task.assignment")
class TaskAssignment:
    """One attempt of one task, as a worker runs it.

    At most one of ``command`` (a shell command), ``call`` ("package.module:function", called
    with ``args``/``kwargs``) and ``agent`` is set; none is a no-op that completes at once with
    result None. ``env`` is added to the worker's environment (the scheduler puts
    ``CUDA_VISIBLE_DEVICES`` there when it reserved GPUs). ``inputs`` maps each dependency's
    task_id to that task's result.
    """

    workflow_id: str
    task_id: str
    attempt: int
    command: str | None = None
    call: str | None = None
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    agent: str | None = None
    timeout_s: float | None = None
    env: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    agent_group: str | None = None
    local_inputs: list = field(default_factory=list)  # dependencies whose results this worker keeps
    term: int = 0  # the dispatching leader's Raft term: with ``attempt``, which dispatch this run is

    @property
    def key(self) -> AttemptKey:
        return (self.workflow_id, self.task_id, self.attempt)

    @property
    def kind(self) -> str:
        """``"command"``, ``"call"``, ``"agent"`` or ``"noop"``."""
        return task_kind(self.command, self.call, self.agent or self.agent_group)


@record("task.assign")
class AssignTasks:
    """Scheduler -> worker (tell): run these attempts."""

    worker_id: str
    tasks: list[TaskAssignment]


@record("task.cancel")
class CancelTasks:
    """Scheduler -> worker (tell): kill these attempts (a list of attempt keys)."""

    worker_id: str
    tasks: list


@record("worker.running_query")
class RunningQuery:
    """Ask a worker which attempts it holds (a new leader does, before requeueing)."""


@record("worker.running")
class RunningTasks:
    worker_id: str
    running: list  # attempt keys


# --------------------------------------------------------------------------- worker -> scheduler


@record("task.finished")
class TaskFinished:
    """How one attempt ended. ``exit_code`` is the process's (negative: killed by that signal),
    None when no process ran. ``error`` is "" when ``ok``."""

    worker_id: str
    workflow_id: str
    task_id: str
    attempt: int
    ok: bool
    exit_code: int | None
    result: Any
    error: str
    stdout_tail: str
    stderr_tail: str
    duration_ms: int
    term: int = 0  # the assignment's: only a report of the committed dispatch completes its task

    @property
    def key(self) -> AttemptKey:
        return (self.workflow_id, self.task_id, self.attempt)


@record("task.finished_batch")
class TasksFinished:
    """Worker -> scheduler (ask): a batch of reports; answered by ``ReportsAccepted``."""

    worker_id: str
    reports: list[TaskFinished]


@record("task.reports_accepted")
class ReportsAccepted:
    """The scheduler committed (or deliberately dropped, as duplicates) the whole batch."""

    count: int


@record("worker.hello")
class WorkerHello:
    info: WorkerInfo


@record("worker.welcome")
class WorkerWelcome:
    worker_id: str
    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS


@record("worker.heartbeat")
class WorkerHeartbeat:
    """``load`` has ``cpu_percent``, ``memory_available_mb`` and ``running`` (processes now)."""

    worker_id: str
    running: list  # attempt keys
    load: dict
    draining: bool


@record("worker.heartbeat_ack")
class HeartbeatAck:
    """``known=False``: the master does not know the worker (send WorkerHello again).
    ``cancel``: attempts the worker must kill, as ``cancel_item`` reads them."""

    known: bool
    cancel: list = field(default_factory=list)


@record("worker.goodbye")
class WorkerGoodbye:
    worker_id: str


# --------------------------------------------------------------------------- addresses


def parse_master_urls(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """Master endpoints from ``"tcp://H:P"``, ``"H:P"`` or ``"http://H:P"`` items, given as a
    list or one comma-separated string; returns ``tcp://H:P`` endpoints, in order, without
    duplicates. Raises ValueError naming a malformed item."""
    items = text.split(",") if isinstance(text, str) else [part for item in text for part in item.split(",")]
    endpoints: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        rest = item
        for scheme in ("tcp://", "http://", "https://"):
            if rest.lower().startswith(scheme):
                rest = rest[len(scheme):]
                break
        rest = rest.rstrip("/")
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
            raise ValueError(f"bad master URL {item!r}: expected tcp://HOST:PORT, HOST:PORT or http://HOST:PORT")
        endpoint = f"tcp://{host}:{int(port)}"
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise ValueError("no master URL given")
    return endpoints
