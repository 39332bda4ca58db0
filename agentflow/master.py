"""A master process: the node, its actors, its HTTP window, and joining the Raft group.

Role: composition only. ``Master`` builds a node and spawns the control-plane actors on it,
handing each the ``ControlPlane`` through which it proposes, reads and watches;
``run_master`` runs one in the foreground until SIGTERM/SIGINT, then hands leadership over
(if it leads) and stops everything it started.

Rules:

* A master started with ``mode="leader"`` bootstraps a cluster of one when its data file is
  empty. So does one started with ``mode="master"`` whose advertised endpoint is the first of
  its ``leader_url`` list, unless another master of that list already knows a leader: every
  pod of a StatefulSet can run the same command, and the first one bootstraps.
* Any other master asks the masters it knows (``leader_url``, then the members in its own
  state, then the leader it hears from) to add it, first as a learner, promoted once caught
  up; one started without ``leader_url`` waits until ``agentflow cluster add`` adds it.
* A master is known by its node id, not its address: one that restarts with data on disk
  under a new address (a pod rescheduled with a new IP) asks again until the committed
  directory of members has its new endpoint (SetMember), then peers send to it there.
* A ``leader_url`` name that does not resolve yet (a peer pod not scheduled yet) is waited
  for, not an error.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from typing import Any

from actors.agent_directory import DEFAULT_HISTORY_SIZE, AgentDirectoryActor
from actors.lock import DEFAULT_MAX_WAITERS, LockActor
from actors.observer import ObserverActor, ObserverSources
from actors.queue import QueueActor
from actors.control_plane import ControlPlane
from actors.raft import SNAPSHOT_EVERY_ENTRIES, RaftActor
from actors.registry import RegistryActor
from actors.scheduler import SchedulerActor
from protocols.assignments import DEFAULT_MAX_RESULT_BYTES
from protocols.client_commands import (DEFAULT_MAX_PENDING_WORKFLOWS, DEFAULT_MAX_TASKS_PER_WORKFLOW,
    DEFAULT_MAX_WORKFLOW_BYTES, SubmissionLimits)
from protocols.control import Join, StatusQuery, TransferLeadership
from protocols.dispatch import DispatchConfig
from protocols.dispatch_messages import RunningCaps
from protocols.names import (AGENTS_ACTOR, LOCK_ACTOR, OBSERVER_ACTOR, QUEUE_ACTOR, RAFT_ACTOR, REGISTRY_ACTOR,
    SCHEDULER_ACTOR)
from protocols.overview import WORKFLOW_LIMIT
from protocols.raft import RaftConfig
from protocols.retention import DEFAULT_RETAIN_MS, DEFAULT_RETAIN_WORKFLOWS, RetentionPolicy
from protocols.rounds import workers_table
from protocols.tenants import running_caps
from protocols.wire import DEFAULT_COMPRESS_MIN_BYTES, DEFAULT_MAX_FRAME_BYTES, ErrorRecord, Redirect
from agentflow.addresses import advertised_address, parse_advertise, unresolved
from runtime.client import parse_master_urls
from runtime.future import AskTimeout, RemoteError
from runtime.http import HttpServer, on_node_thread
from runtime.log import get_logger
from runtime.metrics import MasterMetrics
from runtime.node import DEFAULT_MAX_CONNECTIONS_PER_PEER, Node
from runtime.security import CurveKeys
from runtime.tenancy import MasterGate

log = get_logger("master")

DEFAULT_SNAPSHOT_CHUNK_BYTES = RaftConfig().max_bytes_per_snapshot_chunk  # 4 MiB

JOIN_RETRY_S = 0.2
# A restarted master re-applies its log on the transport thread before it answers anything: with
# 8,200 entries that took over a second on a loaded machine, and the 1 s ask made the master exit
# ("cannot start") in a chaos run. Start-up asks wait this long.
RECOVERY_S = 120.0
# The most a workflow, a result or a snapshot chunk may be: what a frame carries, less room for the
# message around it.
MAX_MESSAGE_BYTES = DEFAULT_MAX_FRAME_BYTES - (1 << 20)
# A Raft log write running longer than this, while the node does not answer, is why /health says.
STALLED_WRITE_S = 1.0
BOOTSTRAP_CHECK_S = 1.0  # how long the first master of --leader-url asks the others for a leader


def default_http_port(port: int, http_port: int | None) -> int:
    """A master serves HTTP (/health, /metrics, /stats) on PORT+10 unless told otherwise (0: off)."""
    return port + 10 if http_port is None else http_port


def raft_timing(heartbeat_ms: int, election_timeout_ms: tuple[int, int]) -> tuple[RaftConfig, float]:
    """Raft counts time in ticks: one tick per heartbeat, the election timeout in whole heartbeats.
    The default is a 100 ms heartbeat and a 1-2 s election timeout; the seed's 1 s / 5-10 s is
    ``raft_timing(1000, (5000, 10000))``."""
    low_ms, high_ms = election_timeout_ms
    if heartbeat_ms <= 0:
        raise ValueError("--heartbeat-ms must be positive")
    if not heartbeat_ms < low_ms <= high_ms:
        raise ValueError("the election timeout must exceed the heartbeat: need heartbeat < min <= max")
    config = RaftConfig(heartbeat_ticks=1, election_ticks_min=max(2, round(low_ms / heartbeat_ms)),
                        election_ticks_max=max(2, round(high_ms / heartbeat_ms)))
    return config, heartbeat_ms / 1000


class Master:
    def __init__(self, mode: str = "leader", port: int = 6767, host: str = "127.0.0.1",
                 leader_url: str | None = None, data_dir: str | None = None, http_port: int | None = None,
                 pub_port: int | None = None, node_id: str | None = None, heartbeat_ms: int = 100,
                 election_timeout_ms: tuple[int, int] = (1000, 2000),
                 snapshot_every_entries: int = SNAPSHOT_EVERY_ENTRIES,
                 snapshot_chunk_bytes: int = DEFAULT_SNAPSHOT_CHUNK_BYTES, advertise: str | None = None,
                 curve: CurveKeys | None = None, lock_max_waiters: int = DEFAULT_MAX_WAITERS,
                 retain_workflows: int = DEFAULT_RETAIN_WORKFLOWS, retain_s: float = DEFAULT_RETAIN_MS / 1000,
                 max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
                 max_tasks_per_workflow: int = DEFAULT_MAX_TASKS_PER_WORKFLOW,
                 max_pending_workflows: int = DEFAULT_MAX_PENDING_WORKFLOWS,
                 max_workflow_bytes: int = DEFAULT_MAX_WORKFLOW_BYTES,
                 agent_history_size: int = DEFAULT_HISTORY_SIZE,
                 max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER,
                 compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES) -> None:
        if mode not in ("leader", "master"):
            raise ValueError(f"--mode must be leader or master, not {mode!r}")
        if snapshot_every_entries < 1:
            raise ValueError("--snapshot-every must be at least 1")
        if lock_max_waiters < 1:
            raise ValueError(f"--lock-max-waiters must be at least 1, not {lock_max_waiters}")
        if retain_workflows < 0 or retain_s < 0:
            raise ValueError("--retain-workflows and --retain-s must not be negative")
        if compress_min_bytes < 0:
            raise ValueError(f"--compress-min-bytes must be 0 (no compression) or more, not {compress_min_bytes}")
        for option, value in (("--snapshot-chunk-bytes", snapshot_chunk_bytes),
                              ("--max-result-bytes", max_result_bytes), ("--max-tasks-per-workflow", max_tasks_per_workflow),
                              ("--max-pending-workflows", max_pending_workflows),
                              ("--max-workflow-bytes", max_workflow_bytes),
                              ("--agent-history-size", agent_history_size),
                              ("--max-connections-per-peer", max_connections_per_peer)):
            if value < 1:
                raise ValueError(f"{option} must be at least 1, not {value}")
        for option, value in (("--snapshot-chunk-bytes", snapshot_chunk_bytes), ("--max-result-bytes", max_result_bytes),
                              ("--max-workflow-bytes", max_workflow_bytes)):
            if value > MAX_MESSAGE_BYTES:  # it could never travel: every message is one frame
                raise ValueError(f"{option} must be at most {MAX_MESSAGE_BYTES} ({MAX_MESSAGE_BYTES >> 20} MiB, what "
                                 f"one message can carry), not {value}")
        self.mode = mode
        self.leader_endpoints = parse_master_urls(leader_url) if leader_url else []
        advertise_host, advertise_port = advertised_address(host, parse_advertise(advertise))
        self.node_id = node_id or f"{advertise_host or host}:{advertise_port or port}"
        data_dir = data_dir or "agentflow-data"
        os.makedirs(data_dir, exist_ok=True)
        self.storage_path = os.path.join(data_dir, f"{self.node_id.replace('/', '_').replace(':', '_')}.sqlite")
        raft_config, tick_s = raft_timing(heartbeat_ms, election_timeout_ms)  # bad options: before binding
        raft_config.max_bytes_per_snapshot_chunk = snapshot_chunk_bytes
        fresh = not os.path.exists(self.storage_path)
        self.recovered = not fresh  # from a data file of an earlier run
        # Its own node is a member of the cluster: agents may be hosted on a master too.
        own = f"tcp://{advertise_host or host}:{advertise_port or port}"
        self.node = Node(self.node_id, host=host, port=port, pub_port=pub_port, master_urls=[own, *self.leader_endpoints],
                         advertise_host=advertise_host, advertise_port=advertise_port, curve=curve,
                         max_connections_per_peer=max_connections_per_peer,
                         compress_min_bytes=compress_min_bytes).start()
        self.http_port = default_http_port(port, http_port)
        bootstrap = mode == "leader" or (fresh and self._first_of_leader_url())
        # Scrapes and probes build no workflow rows: neither reads them, and their ETAs walk every
        # task of each workflow shown, on the transport thread.
        counts = functools.partial(self.stats, workflow_limit=0)
        self.metrics = MasterMetrics(counts)
        self.http: HttpServer | None = None
        self._raft_storage = None  # the RaftActor's, once spawned (read by the HTTP thread)
        try:
            if self.http_port:  # bound now (a taken port fails before anything starts), served below
                self.http = HttpServer(host, self.http_port, self.stats, self.metrics.registry, probe=counts,
                                       stalled=self._stalled_write)
            # The RaftActor publishes its state and leader in the control plane; the other actors
            # propose, read and watch through it (they are all pinned: one thread).
            control = ControlPlane(self.node, RAFT_ACTOR)
            # Tenants' requests are scoped to their names and held to their quotas before any
            # actor sees them (runtime/tenancy.py); the actors never know tenants exist.
            self.node.install_gate(MasterGate(self.node, state=lambda: control.state,
                                              leads=lambda: control.leader_id == self.node_id))
            self.raft = self.node.spawn(RaftActor, control, self.storage_path, raft_config, tick_s, bootstrap,
                                        self.http_port, snapshot_every_entries, name=RAFT_ACTOR, pinned=True)
            self.locks = self.node.spawn(LockActor, control, max_waiters=lock_max_waiters, name=LOCK_ACTOR,
                                         pinned=True)  # watches "lock." applies
            # The scheduler's two services first: it looks them up when it starts.
            dispatch = DispatchConfig(max_result_bytes=max_result_bytes,
                                      retention=RetentionPolicy(retain_workflows, int(retain_s * 1000)),
                                      limits=SubmissionLimits(max_tasks_per_workflow, max_pending_workflows,
                                                              max_workflow_bytes))
            self.queue = self.node.spawn(QueueActor, dispatch.aging_ms_per_point, name=QUEUE_ACTOR, pinned=True)
            self.registry = self.node.spawn(RegistryActor, dispatch.health, name=REGISTRY_ACTOR, pinned=True)
            self.scheduler = self.node.spawn(SchedulerActor, control, config=dispatch, name=SCHEDULER_ACTOR,
                                             pinned=True)
            self._tell_caps()
            self.agents = self.node.spawn(AgentDirectoryActor, control, history_size=agent_history_size,
                                          name=AGENTS_ACTOR, pinned=True)
            storage = self.node.actor(RAFT_ACTOR).storage
            storage.on_commit_s = self.metrics.fsync.observe
            self.metrics.write_running.set_function(storage.write_running_s)
            self._raft_storage = storage
            self.observer = self.node.spawn(ObserverActor, control, self._observer_sources(), self.metrics,
                                            name=OBSERVER_ACTOR, pinned=True)
        except BaseException:
            if self.http is not None:
                self.http.stop()
            self.node.stop()
            raise
        if self.http is not None:
            self.http.start()
        log.info("Master %s serves on %s (http %s, data %s)", self.node_id, self.node.endpoint,
                 self.http_port or "off", self.storage_path)

    def reload_keys(self) -> int:
        """Read the authorized keys and the tenants' quotas again (SIGHUP) and hand the scheduler
        the new caps on running tasks; returns how many keys are admitted."""
        admitted = self.node.transport.gatekeeper.reload()
        self._tell_caps()
        return admitted

    def _tell_caps(self) -> None:
        gatekeeper = self.node.transport.gatekeeper
        if gatekeeper is not None:  # (without CURVE there are no tenants)
            self.scheduler.tell(RunningCaps(running_caps(gatekeeper.quotas)))

    def _observer_sources(self) -> ObserverSources:
        """What the observer reads of the actors beside it (all pinned: read on their thread)."""
        raft, locks = self.node.actor(RAFT_ACTOR), self.node.actor(LOCK_ACTOR)
        queue, registry = self.node.actor(QUEUE_ACTOR).service, self.node.actor(REGISTRY_ACTOR).service
        scheduler, agents = self.node.actor(SCHEDULER_ACTOR), self.node.actor(AGENTS_ACTOR)
        return ObserverSources(raft_core=lambda: raft.core, raft_status=raft.status, lock_clock_ms=locks.now_ms,
                               agent_stats=lambda: agents.stats, queue_stats=queue.stats,
                               scheduler_clock_ms=scheduler.now_ms, workers_table=lambda: workers_table(registry.registry))

    def _first_of_leader_url(self) -> bool:
        """Whether this master is the first one --leader-url names and none of the others it
        names knows a leader (a first master that lost its data joins instead)."""
        if not self.leader_endpoints or self.leader_endpoints[0] != self.node.endpoint:
            return False
        others = [e for e in self.leader_endpoints[1:] if e not in unresolved([e])]
        asks = [self.node.ref(e, RAFT_ACTOR).ask(StatusQuery(), timeout_s=BOOTSTRAP_CHECK_S) for e in others]
        for endpoint, ask in zip(others, asks):
            try:
                leader = ask.get().get("leader")
            except (AskTimeout, RemoteError):
                continue
            if leader:
                log.info("Master %s: %s knows leader %s; joining instead of bootstrapping",
                         self.node_id, endpoint, leader)
                return False
        log.info("Master %s is the first of --leader-url: it bootstraps the cluster", self.node_id)
        return True

    def status(self, timeout_s: float = 1.0) -> dict:
        return self.raft.ask(StatusQuery(), timeout_s=timeout_s).get()

    def stats(self, workflow_limit: int = WORKFLOW_LIMIT) -> dict | None:
        """The observer's snapshot document (actors/observer.py) with ``workflow_limit`` workflow
        rows, or None if the node's thread did not get to it within a second."""
        observer = self.node.actor(OBSERVER_ACTOR)
        return on_node_thread(self.node, lambda: observer.snapshot(workflow_limit))

    def _stalled_write(self) -> str | None:
        """Why the node's thread may not answer, seen from another thread: a Raft log write that
        has not returned (a disk that hangs rather than fails)."""
        storage = self._raft_storage
        running_s = storage.write_running_s() if storage is not None else 0.0
        if running_s < STALLED_WRITE_S:
            return None
        return f"its Raft log write has not returned for {running_s:.1f} s (a disk that hangs?)"

    def registered(self, status: dict) -> bool:
        """A voter whose committed member record, as applied here, has its current endpoint."""
        return self.node_id in status["voters"] and status["members"].get(self.node_id) == self.node.endpoint

    def _join_targets(self, status: dict) -> list[str]:
        """Whom to ask: the leader this master hears from, --leader-url, the other members."""
        members = status["members"]
        leader = status["leader"]
        first = [members.get(leader) or self.node.peers.get(leader)] if leader else []
        others = [members[node_id] for node_id in sorted(members) if node_id != self.node_id]
        return [e for e in dict.fromkeys(first + self.leader_endpoints + others) if e and e != self.node.endpoint]

    def join(self, stop: threading.Event, timeout_s: float | None = None) -> bool:
        """Ask the cluster to add this master, or to record its new address, until it is a
        registered voter (or ``stop`` is set, or ``timeout_s`` has passed)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        request = Join(self.node_id, self.node.endpoint, self.http_port)
        hinted: list[str] = []
        turn = 0
        waiting_for: list[str] = []
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            status = self.status(RECOVERY_S)
            if self.registered(status):
                return True
            if status["leader"] == self.node_id:
                stop.wait(JOIN_RETRY_S)  # it leads: it records its own address (RaftActor)
                continue
            targets = list(dict.fromkeys(hinted + self._join_targets(status)))
            missing = unresolved(targets)
            if missing != waiting_for:
                waiting_for = missing
                if missing:
                    log.info("Master %s waits for %s to resolve", self.node_id, ", ".join(missing))
            targets = [e for e in targets if e not in missing]
            if not targets:
                stop.wait(JOIN_RETRY_S)  # nobody to ask yet: a name to resolve, or `cluster add`
                continue
            endpoint = targets[turn % len(targets)]
            turn += 1
            try:
                answer = self.node.ref(endpoint, RAFT_ACTOR).ask(request, timeout_s=2.0).get()
            except (AskTimeout, RemoteError) as exc:
                log.debug("join via %s: %s", endpoint, exc)
                answer = None
            if isinstance(answer, Redirect) and answer.leader_endpoint:
                hinted = [answer.leader_endpoint]
                turn = 0
                continue
            if isinstance(answer, ErrorRecord):
                log.debug("join via %s: %s", endpoint, answer.message)
            stop.wait(JOIN_RETRY_S)
        return False

    def check_same_cluster(self, timeout_s: float = 2.0) -> None:
        """A master that recovered a membership from its data file, told to join ``leader_url``:
        if that cluster answers and does not count this master in, the file is another
        cluster's (ValueError saying so). No answer proves nothing: go on."""
        for endpoint in self.leader_endpoints:
            try:
                view = self.node.ref(endpoint, RAFT_ACTOR).ask(StatusQuery(), timeout_s=timeout_s).get()
            except (AskTimeout, RemoteError):
                continue
            if not isinstance(view, dict) or view.get("id") == self.node_id or not view.get("voters"):
                continue  # itself, or a master that has not joined anything yet
            if self.node_id not in view.get("voters", []) + view.get("learners", []):
                raise ValueError(
                    f"{self.storage_path} holds the Raft log of another cluster (its members: "
                    f"{', '.join(self.status()['voters'])}), but the cluster at {endpoint} is "
                    f"{', '.join(view.get('voters', []))}: pass another --data-dir (or --node-id), or move the file away")
            return

    def stop(self, transfer_timeout_s: float = 2.0) -> None:
        """Hand leadership to another voter when leading, then stop every thread and socket."""
        try:
            status = self.status()
            if status["role"] == "leader" and len(status["voters"]) > 1:
                self.raft.ask(TransferLeadership(None), timeout_s=1.0).get()
                deadline = time.monotonic() + transfer_timeout_s
                while time.monotonic() < deadline and self.status()["role"] == "leader":
                    time.sleep(0.02)
        except (AskTimeout, RemoteError):
            pass
        if self.http is not None:
            self.http.stop()
        self.node.stop()


def run_master(**options: Any) -> int:
    """Run a master in the foreground until SIGTERM or SIGINT; returns the exit code."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    master = Master(**options)
    gatekeeper = master.node.transport.gatekeeper
    if gatekeeper is not None:  # SIGHUP: read the authorized keys again
        signal.signal(signal.SIGHUP, lambda *_: log.info("Master %s admits %d keys (%d tenants)", master.node_id,
                                                          master.reload_keys(), len(gatekeeper.quotas)))
    try:
        status = master.status(RECOVERY_S)  # a long log is re-applied before the first answer
        if master.mode == "master" and master.recovered and master.node_id in status["voters"]:
            master.check_same_cluster()  # before it registers anywhere
        if not master.registered(status):
            log.info("Master %s registers %s with the cluster (via %s)", master.node_id, master.node.endpoint,
                     ", ".join(master.leader_endpoints) or "the members it knows, or `agentflow cluster add`")
            if master.join(stop):
                log.info("Master %s is a voter at %s", master.node_id, master.node.endpoint)
        stop.wait()
    finally:
        master.stop()
    return 0
