"""Start and always stop OS processes for tests: each has a deadline to come up and to end; and
raw TCP connections to them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

from runtime.client import Client
from agentflow.cluster import LocalCluster, wait_until

REPO = Path(__file__).resolve().parent.parent


def wait_for(condition, timeout_s: float, interval_s: float = 0.02, what: str = "condition"):
    """Poll ``condition`` until it returns a truthy value; a test failure after ``timeout_s``."""
    try:
        return wait_until(condition, timeout_s, what, interval_s)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def raw_connection(port: int, timeout_s: float = 5.0) -> socket.socket:
    """A plain TCP connection to 127.0.0.1:``port`` that says nothing, non-blocking once made."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setblocking(False)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end has closed ``sock`` (a raw_connection); what it sent (a ZeroMQ
    greeting) is read and dropped."""
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@contextlib.contextmanager
def running_cluster(data_dir, client_timeout_s: float = 15.0, prepare=None, curve=None, **options):
    """A started ``LocalCluster(data_dir, **options)`` and a ``Client`` on it, as ``(cluster,
    client)``; ``prepare(cluster)`` may change the children's arguments before they start. On
    the way out the client is closed and every process stopped; if the block failed, the
    cluster's logs are printed first."""
    cluster = LocalCluster(data_dir, client_curve=curve, **options)
    if prepare is not None:
        prepare(cluster)
    client = Client(cluster.master_url, timeout_s=client_timeout_s, curve=curve)
    try:
        cluster.start(client)
        yield cluster, client
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        client.close()
        cluster.stop()


class NodeProcess:
    """``python -m tests.nodeproc`` in a child process; its first stdout line is its endpoint."""

    def __init__(self, node_id: str, port: int = 0) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.nodeproc", node_id, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env, text=True,
        )
        self.endpoint = self.proc.stdout.readline().strip()
        if not self.endpoint.startswith("tcp://"):
            self.stop()
            raise RuntimeError(f"node process {node_id} did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream and not stream.closed:
                stream.close()
