"""Workflow tasks that an agent runs: a worker sends each attempt as a TaskRequest and reports the reply.

    runner = AgentTaskRunner("worker-1", node, on_finished=handle_reports)
    runner.run(assignment)      # assignment.agent (or .agent_group) set; the report comes later
    runner.stop()

Rules of this module:

* An attempt is one request (``AgentCommunication.request``) to ``assignment.agent``, or to one
  live member of ``assignment.agent_group``. Its content is ``{"workflow_id", "task_id",
  "attempt", "args", "kwargs", "inputs"}``: the task's arguments and its dependencies' results,
  and the attempt number, so an agent can tell a repeat from a new task.
* The reply's content is the task's result (passed on to its dependents). An error (the agent
  raised, is not found, its host died, its mailbox is full) or the deadline fails the attempt,
  and the task's retries apply. The deadline is the task's ``timeout_s``, else
  ``DEFAULT_TIMEOUT_S``: no request waits without one.
* Each attempt waits on a thread of a bounded pool (the worker's slots bound how many run);
  ``on_finished`` gets each report on that thread and must only hand it on. A cancelled attempt
  is reported cancelled when its request ends; ``stop`` reports nothing more.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from protocols.tasks import ERROR_CANCELLED, AttemptKey, TaskAssignment, TaskFinished
from runtime.agents import AgentCommunication, AgentCommunicationError

DEFAULT_TIMEOUT_S = 600.0
MAX_THREADS = 64


class AgentTaskRunner:
    def __init__(self, worker_id: str, node, on_finished: Callable[[list[TaskFinished]], None],
                 max_threads: int = MAX_THREADS) -> None:
        self.worker_id = worker_id
        self.on_finished = on_finished
        self.comm = AgentCommunication(node, f"worker-{worker_id}")
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix=f"agentflow-agent-tasks-{worker_id}")
        self._lock = threading.Lock()
        self._running: dict[AttemptKey, str] = {}  # attempt -> "" or the reason it was cancelled
        self._stopping = False

    def run(self, assignment: TaskAssignment) -> None:
        with self._lock:
            if self._stopping or assignment.key in self._running:
                return
            self._running[assignment.key] = ""
        self._pool.submit(self._request, assignment)

    def cancel(self, key: AttemptKey, reason: str = ERROR_CANCELLED) -> bool:
        with self._lock:
            if key not in self._running:
                return False
            self._running[key] = reason
            return True

    def running(self) -> list[AttemptKey]:
        with self._lock:
            return list(self._running)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _request(self, assignment: TaskAssignment) -> None:
        started_s = time.monotonic()
        content = {"workflow_id": assignment.workflow_id, "task_id": assignment.task_id,
                   "attempt": assignment.attempt, "args": list(assignment.args), "kwargs": dict(assignment.kwargs),
                   "inputs": dict(assignment.inputs)}
        timeout_ms = int((assignment.timeout_s or DEFAULT_TIMEOUT_S) * 1000)
        ok, result, error = False, None, ""
        try:
            if assignment.agent is not None:
                reply = self.comm.request(assignment.agent, content, timeout_ms=timeout_ms)
            else:
                reply = self.comm.request(content=content, group=assignment.agent_group, timeout_ms=timeout_ms)
            ok, result = True, reply.content
        except AgentCommunicationError as exc:
            error = str(exc)
        except Exception as exc:  # the cluster did not answer the lookup: fail the attempt, keep the worker
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            cancelled = self._running.pop(assignment.key, "")
            if self._stopping:
                return
        if cancelled:
            ok, result, error = False, None, cancelled
        self.on_finished([TaskFinished(
            worker_id=self.worker_id, workflow_id=assignment.workflow_id, task_id=assignment.task_id,
            attempt=assignment.attempt, ok=ok, exit_code=None, result=result, error=error, stdout_tail="",
            stderr_tail="", duration_ms=int((time.monotonic() - started_s) * 1000), term=assignment.term)])
