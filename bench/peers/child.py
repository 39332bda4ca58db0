"""Standard-library helpers for the peers' benchmark scripts, which run in the peers' own venvs
(.venv-peers/NAME) and so import nothing of AgentFlow's (bench/*.py use them too): a free port,
helper processes started with a deadline on their "ready" line, percentiles and request figures,
a lock contender's loop, the task scripts' arguments, and the one JSON line a script ends with.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

# The message every system carries in the transport and messaging benchmarks.
PAYLOAD = {"task_id": "task-000123", "op": "run", "priority": 500, "args": [1, 2, 3],
           "kwargs": {"x": 1}, "worker": "worker-7", "attempt": 1}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def request_figures(samples_us: list[float]) -> dict:
    """p50, p99 and sequential round trips/s of one-outstanding requests that took ``samples_us``."""
    return {"request_p50_us": percentile(samples_us, 0.5), "request_p99_us": percentile(samples_us, 0.99),
            "round_trips_per_s": len(samples_us) / (sum(samples_us) / 1e6)}


def error_figures(unknown: tuple[float, str], killed: tuple[float, str], after: tuple[float, str]) -> dict:
    """The messaging benchmark's three error cases, each (ms to the error, what was raised), as its
    document's keys."""
    figures: dict = {}
    for key, (ms, raised) in zip(("unknown_agent_error", "killed_host_error", "call_after_kill_error"),
                                 (unknown, killed, after)):
        figures[f"{key}_ms"], figures[key] = ms, raised
    return figures


def sequential_pairs(acquire: Callable[[], bool], release: Callable[[], bool], pairs: int) -> tuple[float, list[float]]:
    """The lock benchmark's one client: (pairs/s, per-pair microseconds) of ``pairs`` acquire+release
    pairs, one at a time, after 20 of warm-up."""
    for _ in range(20):  # warm-up: connections, leader cache, code paths
        if not (acquire() and release()):
            raise RuntimeError("an uncontended warm-up pair failed")
    samples = []
    started = time.perf_counter()
    for _ in range(pairs):
        begin = time.perf_counter()
        if not acquire():
            raise RuntimeError("an uncontended acquire failed")
        if not release():
            raise RuntimeError("a release of a held lock failed")
        samples.append((time.perf_counter() - begin) * 1e6)
    return pairs / (time.perf_counter() - started), samples


def thread_cpu_s(pid: int) -> list[tuple[str, float]]:
    """(name, CPU seconds used so far) of each live thread of process ``pid``, from Linux's
    per-thread schedstat (ns: the clock-tick times of ``stat`` and psutil are 10 ms, too coarse
    for a thread that runs 1 us per commit); none for a process that has ended."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/comm") as comm, open(f"/proc/{pid}/task/{thread}/schedstat") as stat:
                found.append((comm.read().strip(), int(stat.read().split()[0]) / 1e9))
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
    return found


def tree_cpu_s(pid: int | None = None) -> float:
    """CPU seconds used so far by process ``pid`` (default: this one) and every live descendant,
    all threads (``thread_cpu_s``): the task benchmark's CPU per task, read the same way for
    AgentFlow's processes and a peer's (its driver, and the servers and workers it started)."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    total_s, todo = 0.0, [root]
    while todo:
        process = todo.pop()
        todo.extend(children.get(process, ()))
        total_s += sum(seconds for _, seconds in thread_cpu_s(process))
    return total_s


def task_arguments() -> argparse.Namespace:
    """The task benchmark's workload sizes, as bench/tasks.py passes them to a peer's script."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=500)
    parser.add_argument("--fanout", type=int, default=5_000)
    return parser.parse_args()


def run_contenders(locks: list[tuple[Callable[[str], bool], Callable[[str], bool]]], keys: list[str],
                   seconds: float, name: str) -> None:
    """A lock benchmark contender process: warm up each (acquire, release) pair on its key, print
    {"ready": true}, wait for "go" on stdin, loop each pair in a thread of its own for ``seconds``,
    print {"pairs": N} (their sum). A failure or a client still waiting 60 s after the end exits
    non-zero, naming it."""
    for (acquire, release), key in zip(locks, keys):
        if not (acquire(key) and release(key)):
            raise SystemExit(f"contender {name}: a warm-up pair failed")
    counts = [0] * len(locks)
    errors: list[BaseException] = []
    go = threading.Event()

    def loop(i: int) -> None:
        (acquire, release), key = locks[i], keys[i]
        try:
            go.wait(60)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if not acquire(key):
                    raise RuntimeError(f"{name}-{i}: no grant within 30 s")
                if not release(key):
                    raise RuntimeError(f"{name}-{i} lost a lock it held")
                counts[i] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(locks))]
    for thread in threads:
        thread.start()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    go.set()
    for thread in threads:
        thread.join(seconds + 60)
    if errors or any(thread.is_alive() for thread in threads):
        raise SystemExit(f"contender {name}: {errors[:1] or 'a client still waits'}")
    print(json.dumps({"pairs": sum(counts)}), flush=True)


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
