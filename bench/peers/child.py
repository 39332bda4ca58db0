"""Standard-library helpers for the peers' benchmark scripts, which run in the peers' own venvs
(.venv-peers/NAME) and so import nothing of AgentFlow's: a free port, helper processes started
with a deadline on their "ready" line, percentiles, and the one JSON line a script ends with.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

# The message every system carries in the messaging benchmark (bench/transport.py's PAYLOAD).
PAYLOAD = {"task_id": "task-000123", "op": "run", "priority": 500, "args": [1, 2, 3],
           "kwargs": {"x": 1}, "worker": "worker-7", "attempt": 1}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Helper:
    """A helper process of a peer script: started with a pipe on stdin (closing it asks the helper
    to stop), ready once it prints a line starting with "ready"."""

    def __init__(self, argv: list[str], ready_timeout_s: float) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready_line = read_line(self.proc, ready_timeout_s, " ".join(argv[1:3]), "ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)

    def stop(self, timeout_s: float = 10.0) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)


def read_line(proc: subprocess.Popen, timeout_s: float, what: str, prefix: str) -> str:
    """The next line of ``proc``'s stdout that starts with ``prefix``, within ``timeout_s`` (else
    the process is killed and RuntimeError names ``what``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            raise RuntimeError(f"{what}: not ready within {timeout_s:.0f} s")
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{what}: exited {proc.wait(5)} before it was ready")
            if line.startswith(prefix):
                return line.strip()


def wait_stdin_closed() -> None:
    """A helper's main loop: serve until the parent closes our stdin (or dies)."""
    sys.stdin.read()


def emit(document: dict) -> None:
    print(json.dumps(document), flush=True)



def ray_local_only() -> None:
    """Before ``import ray``: Ray on 127.0.0.1 alone (its single-machine mode, without which it
    resolves 127.0.0.1 to the machine's network address), reporting no usage anywhere."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


def ray_init(ray, **options) -> None:
    import logging

    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, configure_logging=False, **options)
