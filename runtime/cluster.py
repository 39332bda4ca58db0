"""A local cluster of real processes: `agentflow up` and `agentflow demo` stand on it.

Role: start masters (the first bootstraps, the others join it) and workers as child processes
of this one on 127.0.0.1, wait until they serve, and stop every one of them on the way out.

Rules: every child is started with a deadline to come up and stopped with SIGTERM, then SIGKILL
after a grace period; none outlives the launcher. Children's output goes to log files in the
data directory, so the launcher's own terminal stays readable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from runtime.client import Client


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def master_ports_free(port: int) -> bool:
    """A master uses PORT (ROUTER), PORT+10 (HTTP) and PORT+100 (PUB)."""
    return all(port_is_free(port + offset) for offset in (0, 10, 100))


def find_master_ports(count: int, first: int) -> list[int]:
    ports: list[int] = []
    port = first
    while len(ports) < count:
        if port > 65_000:
            raise RuntimeError("no free ports for the masters")
        if master_ports_free(port) and all(abs(port - p) not in (10, 100) for p in ports):
            ports.append(port)
        port += 1
    return ports


class ChildProcess:
    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        env = dict(os.environ)
        env.setdefault("AGENTFLOW_LOG", "info")
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        try:
            self.proc.wait(max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


class LocalCluster:
    def __init__(self, data_dir: str | Path, masters: int = 3, workers: int = 2, first_port: int = 6767,
                 worker_options: list[str] | None = None) -> None:
        if masters < 1:
            raise ValueError("--masters must be at least 1")
        if workers < 0:
            raise ValueError("--workers cannot be negative")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.master_count, self.worker_count = masters, workers
        self.ports = find_master_ports(masters, first_port)
        self.worker_options = worker_options or []
        self.masters: list[ChildProcess] = []
        self.workers: list[ChildProcess] = []

    @property
    def master_url(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        """Start the masters, wait for a leader with every master a voter, then the workers."""
        deadline = time.monotonic() + timeout_s
        for i, port in enumerate(self.ports):
            args = ["master", "--port", str(port), "--node-id", f"master-{i + 1}", "--data-dir", str(self.data_dir)]
            args += ["--mode", "leader"] if i == 0 else ["--mode", "master", "--leader-url", f"127.0.0.1:{self.ports[0]}"]
            self.masters.append(ChildProcess(f"master-{i + 1}", args, self.data_dir / f"master-{i + 1}.log"))
        with Client(self.master_url, timeout_s=2.0) as client:
            self._wait(lambda: self._voters(client) >= self.master_count, deadline, "the masters to elect a leader")
            for i in range(self.worker_count):
                self.add_worker(f"worker-{i + 1}", self.worker_options, client, deadline - time.monotonic())
        return self

    def add_worker(self, worker_id: str, options: list[str] = (), client: Client | None = None,
                   timeout_s: float = 30.0) -> ChildProcess:
        """Start one more worker (``options`` are `agentflow worker` flags) and wait until it registered."""
        args = ["worker", "--master-url", self.master_url, "--worker-id", worker_id, *options]
        child = ChildProcess(worker_id, args, self.data_dir / f"{worker_id}.log")
        self.workers.append(child)
        with (Client(self.master_url, timeout_s=2.0) if client is None else contextlib.nullcontext(client)) as asker:
            self._wait(lambda: any(w["worker_id"] == worker_id for w in asker.workers()),
                       time.monotonic() + timeout_s, f"worker {worker_id} to register")
        return child

    def _voters(self, client: Client) -> int:
        try:
            view = client.cluster_status(timeout_s=1.0)
        except Exception:
            return 0
        leader = next((m for m in view["members"] if m["id"] == view["leader"]), None)
        status = client.status_of(leader["address"]) if leader else None
        return len(status["voters"]) if status else 0

    def _wait(self, condition, deadline: float, what: str) -> None:
        while True:
            dead = [child.name for child in self.masters + self.workers if not child.alive()]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what} (logs in {self.data_dir})")
            try:
                if condition():
                    return
            except Exception:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting for {what} (logs in {self.data_dir})")
            time.sleep(0.1)

    def alive(self) -> bool:
        return all(child.alive() for child in self.masters + self.workers)

    def stop(self, grace_s: float = 10.0) -> None:
        """Workers first (they drain), then the masters; SIGKILL whatever is left after the grace."""
        for group in (self.workers, self.masters):
            for child in group:
                child.terminate()
            deadline = time.monotonic() + grace_s
            for child in group:
                child.wait(deadline - time.monotonic())
