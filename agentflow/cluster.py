"""A local cluster of real processes: `agentflow up`, `agentflow demo`, the integration tests and
the benchmarks all stand on it.

Role: start masters (the first bootstraps, the others join it) and workers as child processes
of this one on 127.0.0.1, wait until they serve, kill or restart any of them on demand (chaos
tests), and stop every one of them on the way out.

Rules: every wait has a deadline; every child is stopped with SIGTERM, then SIGKILL after a grace
period, so none outlives the launcher. Children inherit this process's environment (set
AGENTFLOW_LOG before starting them) and write their output to log files in the data directory.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from protocols.agents import DirectoryQuery
from protocols.names import AGENTS_ACTOR
from runtime.client import Client
from runtime.security import CurveKeys

REPO = Path(__file__).resolve().parent.parent


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


MASTER_PORT_OFFSETS = (0, 10, 100)  # a master's ROUTER, HTTP and PUB ports


def find_free_ports(count: int, first: int | None = None, offsets: tuple[int, ...] = MASTER_PORT_OFFSETS) -> list[int]:
    """``count`` base ports P with every P+offset free and no two bases sharing a port: from
    ``first`` upwards, or at random in 20000-32000 when None.

    Below Linux's default ephemeral range (32768-60999) on purpose: a port in that range can be
    free when probed and taken a moment later as the source port of some outgoing connection
    (ZeroMQ's reconnects to a stopped peer take a new one each time), and the master then fails
    to bind it. Tests and benchmarks choose their fixed ports below it for the same reason."""
    rng = random.Random()
    bases: list[int] = []
    taken: set[int] = set()
    port = first if first is not None else rng.randrange(20_000, 32_000)
    for _ in range(10_000):
        wanted = {port + offset for offset in offsets}
        if not wanted & taken and all(port_is_free(p) for p in wanted):
            bases.append(port)
            taken |= wanted
            if len(bases) == count:
                return bases
        port = port + 1 if first is not None else rng.randrange(20_000, 32_000)
    raise RuntimeError("no free ports")


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout_s`` passes
    (TimeoutError naming ``what``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM ``proc`` if it still runs and wait for it; SIGKILL if it has not exited within
    ``grace_s`` (a helper binary: a Prometheus, a Redis)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class ChildProcess:
    """One `agentflow` child (``python -m agentflow.cli ARGS``); ``start()`` again restarts it as it was.
    ``prefix`` runs it through another command that execs it (``ip netns exec NS``); ``host`` is
    where it listens."""

    def __init__(self, name: str, args: list[str], log_path: Path, port: int | None = None,
                 prefix: list[str] | None = None, http_port: int | None = None, host: str = "127.0.0.1") -> None:
        self.name = self.node_id = name
        self.args = args
        self.prefix = prefix or []
        self.log_path = log_path
        self.port = port
        self.http_port = http_port  # /metrics, /health, /stats
        self.host = host
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def start(self) -> ChildProcess:
        env = dict(os.environ)
        env.setdefault("AGENTFLOW_LOG", "info")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.prefix, sys.executable, "-m", "agentflow.cli", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9, for chaos tests."""
        if self.alive():
            self.proc.kill()
        self.wait(10)

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(max(0.0, timeout_s))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, grace_s: float = 10.0) -> None:
        self.terminate()
        self.wait(grace_s)


class LocalCluster:
    def __init__(self, data_dir: str | Path, masters: int = 3, workers: int = 0, first_port: int | None = None,
                 worker_options: list[str] | None = None, master_options: list[str] | None = None,
                 client_curve: CurveKeys | None = None) -> None:
        if masters < 1:
            raise ValueError("--masters must be at least 1")
        if workers < 0:
            raise ValueError("--workers cannot be negative")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.worker_count = workers
        self.worker_options = worker_options or []
        ports = find_free_ports(masters, first_port)
        self.masters: list[ChildProcess] = []
        for i, port in enumerate(ports):
            node_id = f"master-{i + 1}"
            args = ["master", "--port", str(port), "--node-id", node_id, "--data-dir", str(self.data_dir)]
            args += ["--mode", "leader"] if i == 0 else ["--mode", "master", "--leader-url", f"127.0.0.1:{ports[0]}"]
            args += master_options or []
            self.masters.append(ChildProcess(node_id, args, self.data_dir / f"{node_id}.log", port, http_port=port + 10))
        self.workers: list[ChildProcess] = []
        self.client_curve = client_curve  # the keys of the clients this launcher makes (CURVE clusters)
        self.agents: list[ChildProcess] = []

    @property
    def master_url(self) -> str:
        return ",".join(f"{master.host}:{master.port}" for master in self.masters)

    def by_id(self, node_id: str) -> ChildProcess:
        return next(master for master in self.masters if master.node_id == node_id)

    def start(self, client: Client | None = None, timeout_s: float = 30.0) -> dict:
        """Start the masters and wait until all are voters under one leader, then the workers;
        returns the cluster view."""
        deadline = time.monotonic() + timeout_s
        for master in self.masters:
            master.start()
        with self._asker(client) as asker:
            view = self.wait_healthy(asker, len(self.masters), deadline - time.monotonic())
            # Started together, then waited for together: each one's start-up overlaps the others'.
            started = [self._start_worker(f"worker-{i + 1}", self.worker_options) for i in range(self.worker_count)]
            self._wait_registered(asker, [child.name for child in started], deadline - time.monotonic())
        return view

    def wait_healthy(self, client: Client, voters: int, timeout_s: float = 30.0) -> dict:
        """The cluster view once ``voters`` reachable masters are voters under one leader."""

        def healthy():
            view = client.cluster_status(timeout_s=2)
            if not view["leader"]:
                return None
            leader = next(m for m in view["members"] if m["id"] == view["leader"])
            leader_view = client.status_of(leader["address"])
            if leader_view is None:
                return None
            live = [m for m in view["members"] if m["reachable"] and m["role"] in ("leader", "follower")
                    and m["id"] in leader_view["voters"]]
            return view if len(live) >= voters else None

        return self._wait(healthy, timeout_s, f"{voters} masters to be voters under one leader")

    def add_worker(self, worker_id: str, options: list[str] = (), client: Client | None = None,
                   timeout_s: float = 30.0) -> ChildProcess:
        """Start one more worker (``options`` are `agentflow worker` flags) and wait until it registered."""
        child = self._start_worker(worker_id, options)
        with self._asker(client) as asker:
            self._wait_registered(asker, [worker_id], timeout_s)
        return child

    def add_agent(self, spec: str, agent_id: str, options: list[str] = (), timeout_s: float = 30.0,
                  listed_as: str | None = None) -> ChildProcess:
        """Start an agent host (``agentflow agent run SPEC --agent-id ID OPTIONS``) and wait until
        the agent is in the directory (as ``listed_as``: a tenant's agent is ``TENANT:ID`` there)."""
        args = ["agent", "run", spec, "--agent-id", agent_id, "--master-url", self.master_url, *options]
        name = listed_as or agent_id
        child = ChildProcess(f"agent-{name}", args, self.data_dir / f"agent-{name.replace(':', '-')}.log").start()
        self.agents.append(child)
        with self._asker(None) as asker:
            self._wait(lambda: any(e.agent_id == name for e in asker.call(AGENTS_ACTOR, DirectoryQuery([name]),
                                                                           timeout_s=2).entries),
                       timeout_s, f"agent {name} to register")
        return child

    def _asker(self, client: Client | None):
        """``client`` as a context that leaves it open, or a short-lived client of our own."""
        if client is not None:
            return contextlib.nullcontext(client)
        return Client(self.master_url, timeout_s=2.0, curve=self.client_curve)

    def _start_worker(self, worker_id: str, options: list[str]) -> ChildProcess:
        http_port = find_free_ports(1, offsets=(0,))[0]
        args = ["worker", "--master-url", self.master_url, "--worker-id", worker_id, "--http-port", str(http_port),
                *options]
        child = ChildProcess(worker_id, args, self.data_dir / f"{worker_id}.log", http_port=http_port).start()
        self.workers.append(child)
        return child

    def _wait_registered(self, client: Client, worker_ids: list[str], timeout_s: float) -> None:
        if worker_ids:
            self._wait(lambda: set(worker_ids) <= {w["worker_id"] for w in client.workers()}, timeout_s,
                       f"worker{'s' if len(worker_ids) > 1 else ''} {', '.join(worker_ids)} to register")

    def _wait(self, condition, timeout_s: float, what: str):
        """``wait_until`` that gives up at once when a child this cluster started has exited
        (other than by a test's kill -9); an exception from ``condition`` counts as not yet."""

        def checked():
            dead = [child.name for child in self.masters + self.workers + self.agents if child.proc is not None
                    and not child.alive() and child.proc.returncode != -signal.SIGKILL]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what} (logs in {self.data_dir})")
            try:
                return condition()
            except Exception:
                return None

        try:
            return wait_until(checked, timeout_s, what, interval_s=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} (logs in {self.data_dir})") from None

    def http_targets(self) -> list[tuple[str, str, str]]:
        """``(node id, "master"|"worker", "HOST:HTTP_PORT")`` of every node: what a Prometheus
        scrapes."""
        return ([(m.node_id, "master", f"{m.host}:{m.http_port}") for m in self.masters]
                + [(w.node_id, "worker", f"{w.host}:{w.http_port}") for w in self.workers])

    def alive(self) -> bool:
        return all(child.alive() for child in self.masters + self.workers + self.agents)

    def stop(self, grace_s: float = 10.0) -> None:
        """Workers first (they drain), then the masters; SIGKILL whatever is left after the grace."""
        for group in (self.agents, self.workers, self.masters):
            for child in group:
                child.terminate()
            deadline = time.monotonic() + grace_s
            for child in group:
                child.wait(deadline - time.monotonic())

    def logs(self) -> str:
        return "\n".join(f"--- {child.name}\n{child.log_path.read_text(errors='replace')}"
                         for child in self.masters + self.workers + self.agents if child.log_path.exists())
