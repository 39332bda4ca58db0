"""Real master processes on 127.0.0.1 for integration tests: start, kill -9, restart, stop."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.procs import REPO, wait_for


def free_base_port(offsets=(0, 10, 100)) -> int:
    """A port P with P, P+10 and P+100 free (a master's ROUTER, HTTP and PUB ports)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 40_000)
        try:
            for offset in offsets:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port found")


class MasterProcess:
    def __init__(self, node_id: str, port: int, data_dir: Path, leader_url: str | None = None,
                 log_path: Path | None = None) -> None:
        self.node_id, self.port, self.data_dir, self.leader_url = node_id, port, data_dir, leader_url
        self.log_path = log_path or data_dir / f"{node_id}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> MasterProcess:
        args = [sys.executable, "-m", "runtime.cli", "master", "--port", str(self.port), "--node-id", self.node_id,
                "--data-dir", str(self.data_dir)]
        args += ["--mode", "master", "--leader-url", self.leader_url] if self.leader_url else ["--mode", "leader"]
        env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_LOG=os.environ.get("AGENTFLOW_LOG", "info"))
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def stop(self, timeout_s: float = 15) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._log.close()


class LocalCluster:
    """n masters: the first bootstraps, the others join it."""

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        first = free_base_port()
        self.masters = [MasterProcess("m1", first, data_dir)]
        for i in range(2, masters + 1):
            self.masters.append(MasterProcess(f"m{i}", free_base_port(), data_dir, leader_url=self.masters[0].url))

    @property
    def urls(self) -> str:
        return ",".join(m.url for m in self.masters)

    def by_id(self, node_id: str) -> MasterProcess:
        return next(m for m in self.masters if m.node_id == node_id)

    def start(self, client, timeout_s: float = 30) -> dict:
        """Start every master; returns the cluster view once all are voters under one leader."""
        for master in self.masters:
            master.start()
        return self.wait_healthy(client, len(self.masters), timeout_s)

    def wait_healthy(self, client, voters: int, timeout_s: float = 30) -> dict:
        def healthy():
            try:
                view = client.cluster_status(timeout_s=2)
            except Exception:
                return None
            if not view["leader"]:
                return None
            leader = next(m for m in view["members"] if m["id"] == view["leader"])
            leader_view = client.status_of(leader["address"])
            live = [m for m in view["members"] if m["reachable"] and m["role"] in ("leader", "follower")
                    and leader_view and m["id"] in leader_view["voters"]]
            return view if len(live) >= voters else None

        return wait_for(healthy, timeout_s, interval_s=0.1, what=f"{voters} healthy masters")

    def stop(self) -> None:
        for master in self.masters:
            master.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {m.node_id}\n{m.log_path.read_text()}" for m in self.masters if m.log_path.exists())
