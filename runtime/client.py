"""The Python API to a cluster: find the leader, follow redirects, retry safely, read linearizably.

    client = Client("127.0.0.1:6767,127.0.0.1:6768")
    client.propose(Noop("hello"))            # committed on a majority when it returns
    client.read("members")                   # a linearizable read (ReadIndex on the leader)
    client.cluster_status()                  # the document of `agentflow cluster --json`
    client.close()

Rules: every call has a deadline (``timeout_s``) and fails with ``ClusterUnavailable`` naming
what it tried when no leader answers by then. A command is proposed with the client's session
(client id + sequence number) and retried with the same number, so the cluster applies it once.
Each thread has its own session, so commands of one thread are applied in the order it sent them.
A call is sent and answered on the calling thread's own DEALER socket (``DirectAsks``), not through
the node's transport thread: a ZeroMQ socket is still only ever used by the one thread that made it
(docs/ARCHITECTURE.md §2: the reason for one transport thread), and a blocking call saves two thread hand-offs.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from protocols.control import (
    CancelWorkflowRequest,
    ClientCommand,
    Join,
    Propose,
    QueueStatsRequest,
    Read,
    RemoveMember,
    ReprioritizeRequest,
    StatusQuery,
    SubmitWorkflowRequest,
    WorkersRequest,
    WorkflowStatusRequest,
)
from protocols.workflow_spec import priority_value
from protocols.names import RAFT_ACTOR, SCHEDULER_ACTOR
from protocols.tasks import parse_master_urls as parse_endpoints
from protocols.wire import ASK, ERROR, REPLY, TELL, DecodeError, ErrorRecord, Redirect, decode_frame, encode, encode_frame
from runtime.actor import current_actor_name
from runtime.future import AskTimeout, RemoteError, reply_value
from runtime.node import Node
from runtime.security import CurveKeys

FINAL_WORKFLOW_STATES = ("completed", "failed", "cancelled")
RETRY_PAUSE_S = 0.05
PER_TRY_TIMEOUT_S = 0.5
SUBMIT_S_PER_TASK = 0.000_3  # ten times the measured cost, for the per-try timeout of a submit
SUBMIT_S_PER_MIB = 0.5  # the same for its bytes (45 ms a MiB measured): tasks with huge commands or arguments
SUSPECT_S = 2.0  # a master that timed out is tried last for this long


class ClusterUnavailable(Exception):
    """No leader answered before the call's deadline."""


def parse_master_urls(text: str | list[str] | None) -> list[str]:
    """``tcp://H:P``, ``H:P`` and ``http://H:P`` all name a master's endpoint ``tcp://H:P``."""
    if not text:
        raise ValueError("no master given: pass --master-url or set AGENTFLOW_MASTER_URL")
    return parse_endpoints(text)


class PeerUnreachable(AskTimeout):
    """The connection to the peer dropped or was refused while an ask waited (or before)."""


class DirectAsks:
    """Blocking asks sent from the calling thread, on a DEALER socket of its own per peer.

    An ask through the node's transport costs two thread hand-offs (caller to transport thread,
    and back); a caller that blocks anyway needs neither: it sends, polls its own socket until
    the deadline and reads the answer itself (bench/README.md has the round trips).
    Each socket is watched (a ZeroMQ socket monitor), so an ask to a peer whose connection drops
    or is refused ends at once with ``PeerUnreachable`` (an ``AskTimeout``: a client moves on
    to the next master), and one whose key the peer refuses with RemoteError ``not_authorized``.
    A reply to an ask that timed out may still come in; it is told apart by its correlation id
    and dropped. After a failed ask the socket is closed, so asks queued for a dead peer are not
    delivered when it comes back.

    A socket never reconnects: it serves one connection, and one whose peer went away while it
    sat idle is replaced by a fresh socket at its next use. libzmq's I/O thread blocks for good
    when a monitor's queue is full, and every socket of the process's shared context with it:
    an idle socket retrying a dead master (a few attempts a second, an event each) filled its
    monitor in about five minutes, after which no ask of the process was answered (found as a
    long test process that "degraded"; tests/test_transport.py).
    """

    def __init__(self, node_id: str, endpoint: str, curve: CurveKeys | None = None) -> None:
        self._node_id, self._endpoint = node_id, endpoint
        self._curve = curve
        self._context = zmq.Context.instance()  # shared, never terminated: a Client left unclosed must not hang
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()  # every thread's connections, for close()
        self._ids = itertools.count(1)

    def ask(self, endpoint: str, actor: str, message: Any, timeout_s: float, server_key: bytes | None = None) -> Any:
        deadline = time.monotonic() + timeout_s
        connection = self._connection(endpoint, server_key)
        correlation_id = next(self._ids)
        frame = encode_frame(self._node_id, self._endpoint, [(ASK, current_actor_name(), actor, correlation_id, message)])
        failure: Exception | None = None
        try:
            connection.sock.send(frame, zmq.NOBLOCK)
            while failure is None:
                remaining_ms = math.ceil((deadline - time.monotonic()) * 1000)
                ready = dict(connection.poller.poll(remaining_ms)) if remaining_ms > 0 else {}
                if not ready:
                    break
                if connection.monitor in ready:
                    failure = connection.failure(endpoint)
                if connection.sock not in ready:
                    continue
                try:
                    envelopes = decode_frame(connection.sock.recv()).envelopes
                except DecodeError:
                    continue
                for envelope in envelopes:
                    if envelope.correlation_id != correlation_id or envelope.kind not in (REPLY, ERROR):
                        continue  # the late answer to an ask that timed out
                    return reply_value(envelope.kind, envelope.body)
        except zmq.Again:
            pass
        self._discard((endpoint, server_key))
        raise failure or AskTimeout(f"no answer from {actor} at {endpoint} within {timeout_s:.3f} s")

    def tell(self, endpoint: str, actor: str, message: Any) -> bool:
        """Send ``message`` one-way on this thread's socket to ``endpoint`` (after any ask sent
        there before it, and before any sent after it); False when the socket would block.
        Nothing confirms delivery: what is still queued when the socket closes is dropped."""
        frame = encode_frame(self._node_id, self._endpoint, [(TELL, current_actor_name(), actor, 0, message)])
        try:
            self._connection(endpoint, None).sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    @property
    def open_socket_count(self) -> int:
        return len(self._open)

    def _connection(self, endpoint: str, server_key: bytes | None) -> _Connection:
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = _ThreadConnections(self)
        # By endpoint and key: an agent's directory entry names both, and a connection made with
        # another entry's key must not carry this one's asks (runtime/tenancy.py).
        connection = connections.get((endpoint, server_key))
        if connection is not None and connection.went_away(endpoint):
            self._discard((endpoint, server_key))
            connection = None
        if connection is None:
            connection = connections[endpoint, server_key] = _Connection(self._context, endpoint, self._curve,
                                                                         server_key)
            with self._lock:
                self._open.add(connection)
        return connection

    def _discard(self, where: tuple[str, bytes | None]) -> None:
        self._close(self._local.connections.pop(where))

    def _close(self, connection: _Connection) -> None:
        with self._lock:
            self._open.discard(connection)
        connection.close()

    def close(self) -> None:
        """Close every thread's sockets; only once no thread is asking any more."""
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            connection.close()


# Only the ZAP handler's "no" is a refusal of our key. A handshake that breaks off without detail
# is also what a peer dying mid-handshake looks like (and a wrong --curve-server-key): the ask
# fails as unreachable, so that the caller tries the next master.
_REFUSED = zmq.EVENT_HANDSHAKE_FAILED_AUTH
_BROKEN_OFF = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_LOST = zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED  # (CLOSED: a connect that failed, never retried)


class _Connection:
    """One thread's DEALER to one peer, and the monitor that says when it drops."""

    __slots__ = ("sock", "monitor", "poller")

    def __init__(self, context: zmq.Context, endpoint: str, curve: CurveKeys | None, server_key: bytes | None) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, -1)  # one connection per socket: see DirectAsks
        if curve is not None:
            curve.client_options(self.sock, server_key)  # the masters' key unless told another
        self.monitor = self.sock.get_monitor_socket(_LOST | _REFUSED | _BROKEN_OFF)
        self.sock.connect(endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def failure(self, endpoint: str) -> Exception | None:
        """What the monitor's events mean for an ask waiting on this connection, if anything."""
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return None
            if event & _REFUSED:
                return RemoteError("not_authorized", f"{endpoint} refused this client's key (CURVE)")
            if event & _BROKEN_OFF:
                return PeerUnreachable(f"the CURVE handshake with {endpoint} broke off (the peer went away, "
                                       "or --curve-server-key is not the masters' key)")
            if event & _LOST:
                return PeerUnreachable(f"the connection to {endpoint} dropped or was refused")

    def went_away(self, endpoint: str) -> bool:
        """Whether its peer went away while it sat idle. This runs before every ask: a look at the
        monitor's readiness first (4 us) instead of a read that fails (8 us)."""
        return bool(self.monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN) and self.failure(endpoint) is not None

    def close(self) -> None:
        if self.sock.closed:  # closed by DirectAsks.close() already (this runs again from __del__)
            return
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


class _ThreadConnections(dict):
    """One thread's connections (endpoint -> _Connection), closed when the thread ends and its
    thread-local storage is dropped: a client used from many short-lived threads (a renewal
    thread per lock guard) keeps no socket of theirs open."""

    def __init__(self, owner: DirectAsks) -> None:
        super().__init__()
        self.owner = owner

    def __del__(self) -> None:
        for connection in self.values():
            self.owner._close(connection)


class Client:
    def __init__(self, master_urls: str | list[str] | None, timeout_s: float = 5.0,
                 client_id: str | None = None, node: Node | None = None, curve: CurveKeys | None = None) -> None:
        self.masters = parse_master_urls(master_urls)
        self.curve = node.curve if node is not None else curve
        self.timeout_s = timeout_s
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:12]}"
        self._node = node
        self._own_node = node is None
        self._node_lock = threading.Lock()
        self._leader_endpoint: str | None = None
        self._suspects: dict[str, float] = {}  # endpoint -> monotonic time until which it is suspected
        self._sessions = threading.local()
        self._session_ids = itertools.count(1)
        # Without a node the client listens nowhere: answers come back on the socket an ask left from.
        self._direct = (DirectAsks(node.node_id, node.endpoint, self.curve) if node is not None
                        else DirectAsks(self.client_id, "", self.curve))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def node(self) -> Node:
        """The node for asks sent together (the masters' status): the one given, or this client's
        own, started on first use; plain calls need none."""
        with self._node_lock:
            if self._node is None:
                self._node = Node(self.client_id, master_urls=self.masters, curve=self.curve).start()
            return self._node

    def close(self) -> None:
        self._direct.close()
        if self._own_node and self._node is not None:
            self._node.stop()

    # ------------------------------------------------------------------ calls

    def call(self, actor: str, message: Any, timeout_s: float | None = None,
             per_try_timeout_s: float = PER_TRY_TIMEOUT_S) -> Any:
        """Ask ``actor`` on the leader; follows redirects and tries every master until the deadline.
        ``per_try_timeout_s`` bounds one ask: raise it for requests the leader holds on purpose.

        A master that did not answer in time is suspected for ``SUSPECT_S``: it is tried last, and
        a redirect to it (from a follower that has not noticed yet) is not followed."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        tried: list[str] = []
        turn = 0
        refused = False  # the last try of every master found nothing listening
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                if refused:
                    raise ClusterUnavailable(f"no leader answered within {timeout_s} s: nothing listens at "
                                             f"{', '.join(self.masters)} (every connection refused)")
                raise ClusterUnavailable(
                    f"no leader answered within {timeout_s} s (tried {', '.join(dict.fromkeys(tried)) or 'nothing'})")
            endpoint = self._leader_endpoint
            if endpoint is None:
                candidates = [m for m in self.masters if self._suspects.get(m, 0.0) <= now] or self.masters
                endpoint = candidates[turn % len(candidates)]
                turn += 1
            tried.append(endpoint)
            try:
                answer = self._direct.ask(endpoint, actor, message, min(remaining, per_try_timeout_s))
            except AskTimeout as exc:
                self._suspects[endpoint] = time.monotonic() + SUSPECT_S
                self._leader_endpoint = None
                now = time.monotonic()
                refused = isinstance(exc, PeerUnreachable) and all(self._suspects.get(m, 0.0) > now for m in self.masters)
                if refused:
                    # Every master refused at once: without a pause a cluster that is down is asked
                    # in a tight loop, a new socket each time, until ZeroMQ runs out of sockets.
                    self._pause(deadline)
                continue
            except RemoteError as exc:
                if exc.kind != "not_committed":
                    raise
                refused = False
                self._pause(deadline)
                continue
            self._suspects.pop(endpoint, None)
            refused = False
            if isinstance(answer, Redirect):
                target = answer.leader_endpoint
                if target and target != endpoint and self._suspects.get(target, 0.0) <= time.monotonic():
                    self._leader_endpoint = target
                else:  # no leader known, or only a suspected one: an election is under way
                    self._leader_endpoint = None
                    self._pause(deadline)
                continue
            self._leader_endpoint = endpoint
            if isinstance(answer, ErrorRecord):
                raise RemoteError(answer.kind, answer.message)
            return answer

    def tell_leader(self, actor: str, message: Any) -> bool:
        """Send ``message`` one-way to ``actor`` on the master that last answered this client as
        the leader, in order with this thread's calls; no answer, no retry. False (nothing sent)
        when no leader is known yet: make a ``call`` instead."""
        endpoint = self._leader_endpoint
        return endpoint is not None and self._direct.tell(endpoint, actor, message)

    def ask_at(self, endpoint: str, actor: str, message: Any, timeout_s: float, server_key: bytes | None = None) -> Any:
        """Ask ``actor`` at a known ``endpoint`` (not necessarily a master) from this thread, once:
        no redirects, no retries. Raises AskTimeout, PeerUnreachable or RemoteError."""
        return self._direct.ask(endpoint, actor, message, timeout_s, server_key)

    @staticmethod
    def _pause(deadline: float) -> None:
        time.sleep(max(0.0, min(RETRY_PAUSE_S, deadline - time.monotonic())))

    def next_command(self, body: Any) -> ClientCommand:
        """``body`` with this thread's session: the next sequence number of its client id."""
        session = getattr(self._sessions, "value", None)
        if session is None:
            session = self._sessions.value = [f"{self.client_id}/{next(self._session_ids)}", 0]
        session[1] += 1
        return ClientCommand(session[0], session[1], body)

    def propose(self, body: Any, timeout_s: float | None = None) -> Any:
        """Commit ``body`` through the leader; returns its result once applied."""
        return self.call(RAFT_ACTOR, Propose(encode(self.next_command(body))), timeout_s)

    def read(self, query: str, timeout_s: float | None = None, **args: Any) -> Any:
        """A linearizable read of the replicated state (see protocols.control.read_query)."""
        return self.call(RAFT_ACTOR, Read(query, args), timeout_s)

    # ------------------------------------------------------------------ workflows

    def submit_workflow(self, workflow: Any, timeout_s: float | None = None) -> str:
        """Commit a workflow (a protocols.workflow_spec.Workflow); returns its id. Raises
        RemoteError (kind ``invalid_workflow``, ``unplaceable``, ``rejected``) when the cluster refuses it."""
        command = self.next_command(None)
        # Validating, logging and applying a workflow takes time in proportion to its tasks (about
        # 30 us a task on three local masters) and its bytes; a retry before that only queues
        # behind the first, and sends it all again.
        size_mib = len(encode(workflow)) / (1 << 20)
        per_try_timeout_s = PER_TRY_TIMEOUT_S + SUBMIT_S_PER_TASK * len(workflow.tasks) + SUBMIT_S_PER_MIB * size_mib
        if timeout_s is None:  # the client's deadline must leave room for a few tries of a big one
            timeout_s = max(self.timeout_s, 3 * per_try_timeout_s)
        result = self.call(SCHEDULER_ACTOR, SubmitWorkflowRequest(workflow, command.client_id, command.seq), timeout_s,
                           per_try_timeout_s=per_try_timeout_s)
        if not result.get("ok"):
            raise RemoteError("rejected", result.get("reason", "the workflow was not accepted"))
        return workflow.workflow_id

    def workflow_status(self, workflow_id: str | None = None, timeout_s: float | None = None,
                        tasks: bool = True, summary: bool = False) -> Any:
        """``{"workflow_id", "state", "progress", "tasks": {id: {"state", "attempts", "worker",
        "exit_code"}}}`` (no "tasks" unless ``tasks``; a "summary" of counts, failed and running
        tasks and the critical path's remaining length if ``summary``), or a line for each
        workflow when ``workflow_id`` is None."""
        return self.call(SCHEDULER_ACTOR, WorkflowStatusRequest(workflow_id, tasks, summary), timeout_s)

    def cancel_workflow(self, workflow_id: str, timeout_s: float | None = None) -> dict:
        command = self.next_command(None)
        return self.call(SCHEDULER_ACTOR, CancelWorkflowRequest(workflow_id, command.client_id, command.seq), timeout_s)

    def workers(self, timeout_s: float | None = None) -> list[dict]:
        return self.call(SCHEDULER_ACTOR, WorkersRequest(), timeout_s)

    def queue_stats(self, timeout_s: float | None = None) -> dict:
        """The leader's queue: ``{"total", "by_priority": {name: n}, "oldest_wait_ms", "oldest_task"}``."""
        return self.call(SCHEDULER_ACTOR, QueueStatsRequest(), timeout_s)

    def reprioritize(self, workflow_id: str, task_id: str, priority: str | int,
                     timeout_s: float | None = None) -> dict:
        """Change an unfinished task's priority (``"high"`` or an integer); ``{"ok", "reason"}``."""
        command = self.next_command(None)
        return self.call(SCHEDULER_ACTOR, ReprioritizeRequest(workflow_id, task_id, priority_value(priority),
                                                              command.client_id, command.seq), timeout_s)

    def wait_workflow(self, workflow_id: str, timeout_s: float | None = None, poll_s: float = 0.1,
                      on_progress=None, tasks: bool = True, summary: bool = False) -> dict:
        """Poll the workflow's status until it is completed, failed or cancelled (or the
        deadline); returns its final document (``tasks`` and ``summary`` as for workflow_status)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.workflow_status(workflow_id, tasks=False)  # polls stay cheap for big workflows
            if on_progress is not None:
                on_progress(status)
            if status["state"] in FINAL_WORKFLOW_STATES:
                return self.workflow_status(workflow_id, tasks=tasks, summary=summary)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {workflow_id} still {status['state']} after {timeout_s} s")
            time.sleep(poll_s)

    # ------------------------------------------------------------------ membership

    def add_master(self, node_id: str, endpoint: str, http_port: int, timeout_s: float | None = None) -> dict:
        """Add a master to the Raft group as a learner (the leader promotes it once it has caught
        up); returns ``{"voters", "learners"}`` or ``{"joined", "role"}`` for a member already."""
        return self._change_members(Join(node_id, endpoint, http_port), timeout_s)

    def remove_master(self, node_id: str, timeout_s: float | None = None) -> dict:
        """Take a master out of the Raft group; returns ``{"voters", "learners"}`` after."""
        return self._change_members(RemoveMember(node_id), timeout_s)

    def _change_members(self, request: Any, timeout_s: float | None) -> dict:
        """One membership change at a time: a ``busy`` leader is asked again until the deadline."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            try:
                return self.call(RAFT_ACTOR, request, max(0.05, deadline - time.monotonic()))
            except RemoteError as exc:
                if exc.kind != "busy" or time.monotonic() >= deadline:
                    raise
            self._pause(deadline)

    # ------------------------------------------------------------------ cluster view

    def status_of(self, endpoint: str, timeout_s: float = PER_TRY_TIMEOUT_S) -> dict | None:
        """One master's own view, or None when it does not answer in time (or is unreachable)."""
        return self._statuses([endpoint], timeout_s)[0]

    def _statuses(self, endpoints: list[str], timeout_s: float) -> list[dict | None]:
        """The views of several masters, asked all at once (a silent one costs the timeout once)."""
        asks = [self.node.ref(endpoint, RAFT_ACTOR).ask(StatusQuery(), timeout_s=timeout_s) for endpoint in endpoints]
        views = []
        for ask in asks:
            try:
                views.append(ask.get())
            except (AskTimeout, RemoteError):  # silent, or its connection is refused (peer_unreachable)
                views.append(None)
        return views

    def cluster_status(self, timeout_s: float | None = None) -> dict:
        """``{"leader", "term", "members": [{"id", "address", "role", "term", "commit_index",
        "last_applied"}]}`` as every reachable member reports itself."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        members: dict[str, str] = {}
        views: dict[str, dict] = {}
        for view in self._statuses(self.masters, min(PER_TRY_TIMEOUT_S, timeout_s)):
            if view is not None:
                views[view["id"]] = view
                members.update(view["members"])
                members.setdefault(view["id"], view["address"])
        unknown = sorted(node_id for node_id in members if node_id not in views)  # learned from the others
        per_try_s = min(PER_TRY_TIMEOUT_S, max(0.05, deadline - time.monotonic()))
        for node_id, view in zip(unknown, self._statuses([members[node_id] for node_id in unknown], per_try_s)):
            if view is not None:
                views[node_id] = view
        if not views:
            raise ClusterUnavailable(f"no master answered (tried {', '.join(self.masters)})")
        leaders = [v for v in views.values() if v["role"] == "leader"]
        leader = max(leaders, key=lambda v: v["term"]) if leaders else None
        if leader is not None:  # a master that was removed but still runs is no member
            members = {node_id: address for node_id, address in members.items()
                       if node_id in leader["voters"] or node_id in leader["learners"]}
        out = []
        for node_id in sorted(members):
            view = views.get(node_id)
            if view is None:
                out.append({"id": node_id, "address": members[node_id], "role": None, "term": None,
                            "commit_index": None, "last_applied": None, "reachable": False})
            else:
                # A master the leader has just added calls itself a follower until the leader's
                # first append reaches it; the leader's configuration says what it is.
                role = "learner" if leader is not None and node_id in leader["learners"] else view["role"]
                out.append({"id": node_id, "address": view["address"], "role": role, "term": view["term"],
                            "commit_index": view["commit_index"], "last_applied": view["last_applied"],
                            "reachable": True})
        return {"leader": leader["id"] if leader else None,
                "term": max(v["term"] for v in views.values()),
                "members": out}
