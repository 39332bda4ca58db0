"""Clients' commands on the leader: their sessions, retries in flight, and the checks they pass.

Role: the part of the dispatch state (protocols/dispatch.py) that turns a client's request
(submit, cancel, reprioritize) into the command to commit in its session, or the error refusing it, and
answers every ask that waits for that commit. Pure: instructions go into the list it is given.

Rules:

* A command its session already answered gets that answer again; one older than the session
  remembers is refused; a retry of one still in flight waits for the same commit: a big
  workflow can take longer to log than the client's per-try timeout, and each copy would cost
  as much as the first to check and log (the log drops a duplicate only after committing it).
* A submission is held to the cluster's limits first (``SubmissionLimits``: tasks per workflow,
  workflows pending), cheapest check first, so a huge or endless input costs a count, not a
  parse of its graph; then checked for its structure and, while workers are registered, for fit:
  every task must fit some registered worker, whatever its load (the registry answers; tasks
  of the same shape are asked about once). Its size is checked last, on the bytes the log would
  hold (``size_refusal``): the scheduler encodes the command once and proposes those bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from protocols.assignments import task_shape
from protocols.workflow_spec import Workflow, WorkflowError, check_structure
from protocols.workflow_table import CancelWorkflow, ReprioritizeTask, SubmitWorkflow
from protocols.dispatch_messages import Answer, ClientRequest, Committed, ProposeClient
from protocols.registry import TaskRequirements
from protocols.wire import ErrorRecord


DEFAULT_MAX_TASKS_PER_WORKFLOW = 100_000
DEFAULT_MAX_PENDING_WORKFLOWS = 10_000
# A workflow is one Raft entry, replicated to every master and kept in each one's memory until
# it is forgotten: 100,000 no-op tasks take 6.6 MB.
DEFAULT_MAX_WORKFLOW_BYTES = 16 * 1024 * 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class SubmissionLimits:
    """What one submission may bring; a refusal names the limit and the option that sets it."""

    max_tasks_per_workflow: int = DEFAULT_MAX_TASKS_PER_WORKFLOW
    max_pending_workflows: int = DEFAULT_MAX_PENDING_WORKFLOWS  # known and not finished
    max_workflow_bytes: int = DEFAULT_MAX_WORKFLOW_BYTES  # the submission as the log would hold it

    def refusal(self, workflow: Workflow, pending: int) -> ErrorRecord | None:
        tasks = len(workflow.tasks)
        if tasks > self.max_tasks_per_workflow:
            return ErrorRecord("limit_exceeded", f"workflow {workflow.workflow_id!r} has {tasks} tasks; this cluster "
                               f"takes at most {self.max_tasks_per_workflow} per workflow (--max-tasks-per-workflow)")
        if pending >= self.max_pending_workflows:
            return ErrorRecord("limit_exceeded", f"{pending} workflows are pending (not finished); this cluster "
                               f"takes at most {self.max_pending_workflows} (--max-pending-workflows): "
                               "retry when some have finished")
        return None

    def size_refusal(self, command: Any, size: int) -> ErrorRecord | None:
        """The refusal of a client command of ``size`` bytes (as encoded for the log) that submits
        a workflow over ``max_workflow_bytes``; None for any other command."""
        if not isinstance(command, SubmitWorkflow) or size <= self.max_workflow_bytes:
            return None
        workflow_id = command.workflow.workflow_id[:100]
        return ErrorRecord("limit_exceeded", f"workflow {workflow_id!r} is {size / MIB:.1f} MiB as logged; this cluster "
                           f"takes at most {self.max_workflow_bytes / MIB:.1f} MiB per workflow (--max-workflow-bytes)")


class ClientCommands:
    def __init__(self, limits: SubmissionLimits | None = None) -> None:
        self.limits = limits or SubmissionLimits()
        self.waiting: dict[tuple[str, int], list] = {}  # (client, seq) -> asks waiting for its commit
        self.fit_checks: dict[int, tuple[ClientRequest, list[str]]] = {}  # token -> submission, task per shape

    def request(self, event: ClientRequest, sessions: Any, have_workers: bool, out: list,
                new_token: Callable[[], int], pending_workflows: int = 0) -> tuple[int, list[TaskRequirements]] | None:
        """Handle one request; returns ``(token, requirements)`` when the registry must check
        that each of those fits some worker before the command can be proposed.
        ``pending_workflows``: how many workflows the table knows and are not finished."""
        status, previous = sessions.check(event.client_id, event.seq)
        if status == sessions.DUPLICATE:
            out.append(Answer(event.reply, previous))
            return None
        if status == sessions.EXPIRED:
            out.append(Answer(event.reply, ErrorRecord("session_expired", f"seq {event.seq} is too old")))
            return None
        session_key = (event.client_id, event.seq)
        if session_key in self.waiting:
            self.waiting[session_key].append(event.reply)
            return None
        fit_check = None
        if event.kind == "submit":
            body, shapes = self._submission(event, have_workers, pending_workflows)
            if shapes:
                token = new_token()
                self.fit_checks[token] = (event, [task_id for _, task_id in shapes.values()])
                fit_check = (token, [requirements for requirements, _ in shapes.values()])
        elif event.kind == "cancel" and isinstance(event.body, str):
            body = CancelWorkflow(event.body, event.now_ms)
        elif event.kind == "reprioritize":
            body = self._reprioritization(event.body)
        else:
            body = ErrorRecord("bad_request", f"no client command {event.kind!r}")
        if isinstance(body, ErrorRecord):
            out.append(Answer(event.reply, body))
            return None
        self.waiting[session_key] = [event.reply]
        if fit_check is None:
            out.append(ProposeClient(event.client_id, event.seq, body))
        return fit_check

    def _submission(self, event: ClientRequest, have_workers: bool, pending: int) -> tuple[Any, dict]:
        """The SubmitWorkflow command (or the ErrorRecord refusing it), and the distinct task
        requirements to check for fit, each with the first task that has them."""
        workflow = event.body
        if not isinstance(workflow, Workflow):
            return ErrorRecord("invalid_workflow", "the request carries no workflow"), {}
        refusal = self.limits.refusal(workflow, pending)
        if refusal is not None:
            return refusal, {}
        try:
            check_structure(workflow)
        except WorkflowError as exc:
            return ErrorRecord("invalid_workflow", str(exc)), {}
        shapes: dict[tuple, tuple[TaskRequirements, str]] = {}
        if have_workers:
            for task in workflow.tasks:
                if not task.is_noop:
                    shape = task_shape(task)
                    if shape not in shapes:
                        shapes[shape] = (task.requirements, task.task_id)
        return SubmitWorkflow(workflow, event.now_ms), shapes

    @staticmethod
    def _reprioritization(body: Any) -> Any:
        """``(workflow_id, task_id, priority)`` as the command that changes it (the table refuses
        an unknown workflow or task, or one already finished)."""
        try:
            workflow_id, task_id, priority = body
        except (TypeError, ValueError):
            return ErrorRecord("bad_request", "reprioritize needs a workflow id, a task id and a priority")
        if not (isinstance(workflow_id, str) and isinstance(task_id, str) and type(priority) is int):
            return ErrorRecord("bad_request", "reprioritize needs a workflow id, a task id and a priority")
        return ReprioritizeTask(workflow_id, task_id, priority)

    def fit_checked(self, token: int, problems: list, out: list) -> None:
        """The registry's answer to a fit check: propose the submission, or refuse it."""
        waiting = self.fit_checks.pop(token, None)
        if waiting is None:
            return
        event, owners = waiting
        session_key = (event.client_id, event.seq)
        for task_id, problem in zip(owners, problems):
            if problem:
                refusal = ErrorRecord("unplaceable", f"task {task_id!r} can never run here: {problem}")
                out.extend(Answer(reply, refusal) for reply in self.waiting.pop(session_key, []))
                return
        out.append(ProposeClient(event.client_id, event.seq, SubmitWorkflow(event.body, event.now_ms)))

    def committed(self, event: Committed, out: list) -> None:
        for reply in self.waiting.pop((event.client_id, event.seq), []):
            out.append(Answer(reply, event.outcome, event.error))

    def abandon(self, out: list) -> None:
        """Leadership changed: every waiting ask is told to retry (elsewhere)."""
        for replies in self.waiting.values():
            out.extend(Answer(reply, error=("not_committed", "leadership changed; retry")) for reply in replies)
        self.waiting.clear()
        self.fit_checks.clear()

