"""A master process: the node, its actors, its HTTP window, and joining the Raft group.

Role: composition only. ``Master`` builds a node and spawns the control-plane actors on it,
handing each the ``ControlPlane`` through which it proposes, reads and watches;
``run_master`` runs one in the foreground until SIGTERM/SIGINT, then hands leadership over
(if it leads) and stops everything it started.

Rules: a master started with ``mode="leader"`` bootstraps a cluster of one when its data file
is empty; ``mode="master"`` asks ``leader_url`` to add it (as a learner, promoted once caught
up) when its data file is empty. With data on disk, both simply recover and rejoin.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from actors.agent_directory import AgentDirectoryActor
from actors.lock import LockActor
from actors.raft import SNAPSHOT_EVERY_ENTRIES, ControlPlane, RaftActor
from actors.scheduler import SchedulerActor
from protocols.names import AGENTS_ACTOR, LOCK_ACTOR, RAFT_ACTOR, SCHEDULER_ACTOR
from protocols.control import Join, StatusQuery, TransferLeadership
from protocols.raft import RaftConfig
from protocols.wire import ErrorRecord, Redirect
from runtime.client import parse_master_urls
from runtime.future import AskTimeout, RemoteError
from runtime.http import HttpServer
from runtime.log import get_logger
from runtime.node import Node

log = get_logger("master")

JOIN_RETRY_S = 0.2


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
                 snapshot_every_entries: int = SNAPSHOT_EVERY_ENTRIES) -> None:
        if mode not in ("leader", "master"):
            raise ValueError(f"--mode must be leader or master, not {mode!r}")
        if snapshot_every_entries < 1:
            raise ValueError("--snapshot-every must be at least 1")
        if mode == "master" and not leader_url:
            raise ValueError("--mode master needs --leader-url (a member of the cluster to join)")
        self.mode = mode
        self.leader_endpoints = parse_master_urls(leader_url) if leader_url else []
        self.node_id = node_id or f"{host}:{port}"
        data_dir = data_dir or "agentflow-data"
        os.makedirs(data_dir, exist_ok=True)
        self.storage_path = os.path.join(data_dir, f"{self.node_id.replace('/', '_').replace(':', '_')}.sqlite")
        raft_config, tick_s = raft_timing(heartbeat_ms, election_timeout_ms)  # bad options: before binding
        # Its own node is a member of the cluster: agents may be hosted on a master too.
        self.node = Node(self.node_id, host=host, port=port, pub_port=pub_port,
                         master_urls=[f"tcp://{host}:{port}", *self.leader_endpoints]).start()
        self.http_port = port + 10 if http_port is None else http_port
        # The RaftActor publishes its state and leader in the control plane; the other actors
        # propose, read and watch through it (they are all pinned: one thread).
        control = ControlPlane(self.node, RAFT_ACTOR)
        self.raft = self.node.spawn(RaftActor, control, self.storage_path, raft_config, tick_s, mode == "leader",
                                    self.http_port, snapshot_every_entries, name=RAFT_ACTOR, pinned=True)
        self.locks = self.node.spawn(LockActor, control, name=LOCK_ACTOR, pinned=True)  # watches "lock." applies
        self.scheduler = self.node.spawn(SchedulerActor, control, name=SCHEDULER_ACTOR, pinned=True)
        self.agents = self.node.spawn(AgentDirectoryActor, control, name=AGENTS_ACTOR, pinned=True)
        self.http = HttpServer(host, self.http_port, self.stats).start() if self.http_port else None
        log.info("Master %s serves on %s (http %s, data %s)", self.node_id, self.node.endpoint,
                 self.http_port or "off", self.storage_path)

    def status(self, timeout_s: float = 1.0) -> dict:
        return self.raft.ask(StatusQuery(), timeout_s=timeout_s).get()

    def stats(self) -> dict:
        try:
            raft = self.status()
        except AskTimeout:
            raft = None
        return {"node_id": self.node_id, "serving": bool(raft and raft.get("leader")),
                "raft": raft, "counters": self.node.stats()}

    def join(self, stop: threading.Event, timeout_s: float | None = None) -> bool:
        """Ask the cluster to add this master until it is a voter (or ``stop`` is set)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        request = Join(self.node_id, self.node.endpoint, self.http_port)
        endpoints = list(self.leader_endpoints)
        turn = 0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if self.node_id in self.status()["voters"]:
                return True
            endpoint = endpoints[turn % len(endpoints)]
            turn += 1
            try:
                answer = self.node.ref(endpoint, RAFT_ACTOR).ask(request, timeout_s=2.0).get()
            except (AskTimeout, RemoteError) as exc:
                log.debug("join via %s: %s", endpoint, exc)
                answer = None
            if isinstance(answer, Redirect) and answer.leader_endpoint:
                endpoints.insert(0, answer.leader_endpoint)
                turn = 0
                continue
            if isinstance(answer, ErrorRecord):
                log.debug("join via %s: %s", endpoint, answer.message)
            stop.wait(JOIN_RETRY_S)
        return False

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
    try:
        if master.mode == "master" and master.node_id not in master.status()["voters"]:
            log.info("Master %s joins the cluster via %s", master.node_id, ", ".join(master.leader_endpoints))
            if master.join(stop):
                log.info("Master %s is a voter", master.node_id)
        stop.wait()
    finally:
        master.stop()
    return 0
