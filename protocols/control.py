"""The control plane's replicated state machine: what every master applies from the Raft log.

Role: the composition of the pure states (the masters' directory, client sessions, locks,
workflows, the agent directory) behind one ``apply(index, data)``. The RaftActor calls it for each
committed normal entry, in log order, on every master.

Rules:

* Pure and deterministic: no clocks or randomness (time comes inside commands), no iteration
  whose order could differ between masters.
* A client's command travels wrapped in ``ClientCommand(client_id, seq, body)``: a retried
  command (same client and seq) is applied once and answered with its first result.
* A command is routed by its record tag's prefix (``lock.`` to the lock table, ...).
* ``apply`` never raises on a committed entry: an undecodable or unknown command is answered
  with an ``ErrorRecord`` (every master answers the same), so a bad entry cannot stop the group.
"""

from __future__ import annotations

from typing import Any

from protocols.agents import AgentDirectory
from protocols.workflow_table import WorkflowTable
from protocols.locks import LockTable
from protocols.sessions import ClientSessions
from protocols.wire import DecodeError, ErrorRecord, decode, encode, is_record, record, tag_of

SNAPSHOT_VERSION = 1


@record("ctl.client_command")
class ClientCommand:
    """A client's command with its session: ``seq`` grows by one per new command of ``client_id``."""

    client_id: str
    seq: int
    body: Any


@record("ctl.batch")
class Batch:
    """Several commands in one log entry, applied in order; the result is the list of results.
    The leader's hot paths (dispatching tasks, finishing them) commit one entry per round."""

    commands: list


@record("ctl.set_member")
class SetMember:
    """Where a master listens: its ROUTER endpoint and its HTTP port (0: none)."""

    node_id: str
    endpoint: str
    http_port: int


@record("ctl.noop")
class Noop:
    """A command that changes nothing (benchmarks and tests of the log itself)."""

    payload: Any


class ControlState:
    def __init__(self) -> None:
        self.members: dict[str, SetMember] = {}
        self.sessions = ClientSessions()
        self.locks = LockTable()
        self.workflows = WorkflowTable()
        self.agents = AgentDirectory()
        self.last_applied = 0

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, data: bytes) -> tuple[Any, Any]:
        """Apply the command in ``data`` at log ``index``; returns ``(command, result)``.

        ``command`` is None when nothing was applied (undecodable, or a client's retry of a
        command that already ran, answered with the first result): watchers of applied commands
        must not react twice to one command."""
        self.last_applied = index
        try:
            command = decode(data)
        except DecodeError as exc:
            return None, ErrorRecord("bad_command", str(exc))
        if isinstance(command, ClientCommand):
            status, result = self.sessions.check_and_record(
                command.client_id, command.seq, index, lambda: self._dispatch_safely(index, command.body))
            if status == ClientSessions.NEW:
                return command.body, result
            if status == ClientSessions.EXPIRED:
                return None, ErrorRecord("session_expired", f"seq {command.seq} is too old")
            return None, result  # a duplicate: the first result
        return command, self._dispatch_safely(index, command)

    def _dispatch_safely(self, index: int, command: Any) -> Any:
        """``_dispatch``, with any exception turned into the command's error result. Any client
        can propose any record (fuzzing found two that raised: a Batch of two lock commands, a
        workflow's part such as ``wf.resources`` sent as a command); raising here would stop
        every master at this entry, while every master computing the same error goes on."""
        try:
            return self._dispatch(index, command)
        except Exception as exc:
            return ErrorRecord("bad_command", f"{type(command).__name__}: {type(exc).__name__}")

    def _dispatch(self, index: int, command: Any) -> Any:
        if not is_record(command):
            return ErrorRecord("unknown_command", type(command).__name__)
        if isinstance(command, Batch):
            return [self._dispatch(index, sub) for sub in command.commands]
        tag = tag_of(type(command))
        if tag.startswith("lock."):
            return self.locks.apply(index, command)
        if tag.startswith("wf."):
            # A plain map, so that client sessions and snapshots can keep it.
            applied = self.workflows.apply(command)
            return {"ok": applied.ok, "reason": applied.reason, "attempt": applied.attempt,
                    "ready": applied.ready, "released": applied.released, "finished": applied.finished}
        if tag.startswith("agent."):
            return self.agents.apply(command)
        if isinstance(command, SetMember):
            self.members[command.node_id] = command
            return True
        if isinstance(command, Noop):
            return command.payload
        return ErrorRecord("unknown_command", tag)

    # ------------------------------------------------------------------ snapshots

    def to_snapshot(self) -> bytes:
        return encode({
            "version": SNAPSHOT_VERSION,
            "last_applied": self.last_applied,
            "members": [self.members[node_id] for node_id in sorted(self.members)],
            "sessions": self.sessions.to_dict(),
            "locks": self.locks.to_snapshot(),
            "workflows": self.workflows.to_snapshot(),
            "agents": self.agents.to_snapshot(),
        })

    @classmethod
    def from_snapshot(cls, data: bytes) -> ControlState:
        # Not held to the frame limit: a snapshot comes from this master's own disk or, in
        # chunks, from the leader (bounded by RaftConfig.max_snapshot_bytes), and a state over
        # 64 MiB (326 MB with the default retention) must load.
        snapshot = decode(data, max_bytes=len(data))
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"control snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
        state = cls()
        state.last_applied = snapshot["last_applied"]
        state.members = {member.node_id: member for member in snapshot["members"]}
        state.sessions = ClientSessions.from_dict(snapshot["sessions"])
        state.locks = LockTable.from_snapshot(snapshot["locks"])
        state.workflows = WorkflowTable.from_snapshot(snapshot["workflows"])
        if "agents" in snapshot:  # snapshots written before agents existed have none
            state.agents = AgentDirectory.from_snapshot(snapshot["agents"])
        return state


# --------------------------------------------------------------------------- requests to a master


@record("ctl.propose")
class Propose:
    """Ask the leader to commit ``body`` (a command record, or one already encoded to bytes,
    usually a ClientCommand); answered with its result once applied."""

    body: Any


@record("ctl.read")
class Read:
    """A linearizable read (ReadIndex) of the replicated state: ``query`` names what to read."""

    query: str
    args: dict


@record("ctl.join")
class Join:
    """Add a master (it asks itself, or `agentflow cluster add` asks for it): first as a learner,
    promoted once caught up. From a member already in the group: record its new address."""

    node_id: str
    endpoint: str
    http_port: int


@record("ctl.remove_member")
class RemoveMember:
    """Take a master out of the Raft group (`agentflow cluster remove`): one membership change
    through the log. The leader hands its leadership over first when it is the one removed."""

    node_id: str


@record("ctl.status")
class StatusQuery:
    """This master's own view: role, term, commit and applied index, leader, members; with
    ``digest``, also a hash of its replicated state at ``last_applied`` (chaos tests compare
    masters with it; computing it encodes the whole state, so it is never asked by default)."""

    digest: bool = False


@record("ctl.transfer")
class TransferLeadership:
    to: str | None


@record("ctl.submit_workflow")
class SubmitWorkflowRequest:
    """A client submits a workflow; the leader's scheduler validates, then commits it."""

    workflow: Any  # protocols.workflow_spec.Workflow
    client_id: str
    seq: int


@record("ctl.workflow_status")
class WorkflowStatusRequest:
    """One workflow's status document (without the per-task part unless ``tasks``; with a
    summary that stays small for big workflows if ``summary``: protocols/views.py), or
    (``workflow_id`` None) a line for each workflow."""

    workflow_id: str | None
    tasks: bool = True
    summary: bool = False


@record("ctl.cancel_workflow")
class CancelWorkflowRequest:
    workflow_id: str
    client_id: str
    seq: int


@record("ctl.workers")
class WorkersRequest:
    """The worker table as `agentflow workers --json` prints it."""


@record("ctl.queue_stats")
class QueueStatsRequest:
    """The leader's queue of ready tasks: ``{"total", "by_priority", "oldest_wait_ms", "oldest_task"}``."""


@record("ctl.reprioritize")
class ReprioritizeRequest:
    """Change an unfinished task's priority (committed: a new leader's queue keeps it)."""

    workflow_id: str
    task_id: str
    priority: int
    client_id: str
    seq: int


def read_query(state: ControlState, query: str, args: dict) -> Any:
    """Evaluate a read against the applied state (the caller has made it linearizable). Leases
    are read at the replicated clock, as the commands after the read will see them."""
    if query == "lock":
        return state.locks.check_lock(str(args.get("key", "")), state.locks.clock_ms)
    if query == "locks":
        return state.locks.list_locks(state.locks.clock_ms)
    if query == "members":
        return [state.members[node_id] for node_id in sorted(state.members)]
    return ErrorRecord("unknown_query", query)
