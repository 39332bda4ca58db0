"""Lock benchmark: AgentFlow's replicated locks (3 masters) vs a Redis SET NX PX lock, same run.

    .venv/bin/python bench/locks.py [--runs 3] [--pairs 500] [--seconds 4] [--clients 8] [--json FILE]
                                    [--data-dir DIR]

A *pair* is one acquire plus one release of the same key, measured end to end by the client.

* One client: ``--pairs`` sequential pairs from this process: pairs/s, p50 and p99 per pair.
* The lock layer's ceiling, in the same run: pairs of two plain Raft commits (``Noop`` through
  ``Client.propose``), reported as ``lock_pairs_per_s_vs_raft_noop_pairs`` (its "peer" is AgentFlow's
  own Raft, not another system).
* Contending clients: ``--clients`` processes (8) loop on one key for ``--seconds``; pairs/s is
  the sum of their completed pairs over the time. AgentFlow clients wait in the lock's FIFO queue
  (``acquire_blocking``: the grant is pushed to them); Redis clients retry ``SET NX`` at once
  when it fails (no sleep: the peer's best case for throughput).

AgentFlow: three master processes started by agentflow/cluster.py (``agentflow master``), a fresh
cluster per run; every acquire and release is a Raft command durable in SQLite (WAL,
synchronous=FULL: an fsync) on a majority before it is answered. Masters log at warning level
(the lock table logs each grant at info). ``--data-dir`` puts the masters' SQLite files
elsewhere; the default is a temporary directory on the disk, so the figures include its fsync.

Peer: ``redis-server`` (found on PATH) on 127.0.0.1 with persistence off (``--save ""
--appendonly no``: nothing replicated, nothing fsync'd), spoken to with a minimal RESP client over
a socket (no client library is needed or added): ``SET key token NX PX ttl`` to acquire and a Lua
compare-and-delete (``EVALSHA``) to release. When redis-server is not installed the peer is
reported missing (``peer_value: null``). The same Redis is also run durable (``--appendonly yes
--appendfsync always``: every write fsynced before it is answered, as AgentFlow's are, though on
one node and not replicated), reported as the ``*_vs_durable_redis`` rows. Every process started
here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import Result, percentile, report  # noqa: E402
from agentflow.cluster import LocalCluster, find_free_ports  # noqa: E402

HOST = "127.0.0.1"
KEY = "bench-lock"
TTL_S = 10.0
RELEASE_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


# =========================================================================== Redis over RESP


class Resp:
    """The smallest RESP2 client that the benchmark needs: one connection, one command at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def call(self, *args: str | int) -> object:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> object:
        line = self.reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return self.reader.read(size + 2)[:-2].decode()
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise RuntimeError(f"bad RESP reply {line!r}")


class RedisLock:
    """The usual Redis lock: SET NX PX with a random token; release only if the token is still ours."""

    def __init__(self, port: int) -> None:
        self.conn = Resp(port)
        self.release_sha = self.conn.call("SCRIPT", "LOAD", RELEASE_SCRIPT)
        self.token = uuid.uuid4().hex

    def acquire(self, key: str) -> bool:
        return self.conn.call("SET", key, self.token, "NX", "PX", int(TTL_S * 1000)) == "OK"

    def release(self, key: str) -> bool:
        return self.conn.call("EVALSHA", self.release_sha, 1, key, self.token) == 1

    def close(self) -> None:
        self.conn.close()


def redis_version() -> str | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    version = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "?")
    return f"redis {version}"


class RedisServer:
    def __init__(self, data_dir: Path, durable: bool = False) -> None:
        self.port = find_free_ports(1, offsets=(0,))[0]
        # durable: every write is in the append-only file and fsynced before Redis answers.
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", HOST, "--save", "", *persistence,
             "--dir", str(data_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = Resp(self.port)
                if conn.call("PING") == "PONG":
                    conn.close()
                    return
            except OSError:
                pass
            except RuntimeError as exc:  # "LOADING": it is still reading its append-only file
                if "LOADING" not in str(exc):
                    raise
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# =========================================================================== one client, sequential pairs


def sequential_pairs(acquire, release, pairs: int) -> tuple[float, list[float]]:
    """(pairs/s, per-pair microseconds) of ``pairs`` acquire+release pairs, one at a time."""
    for _ in range(20):  # warm-up: connections, leader cache, code paths
        assert acquire() and release()
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


# =========================================================================== contending clients (child processes)


def contend(system: str, address: str, seconds: float, name: str) -> None:
    """Child: loop acquire+release on KEY for ``seconds`` after "go" on stdin; print the count."""
    if system == "agentflow":
        from runtime.client import Client
        from runtime.locks import DistributedLock

        client = Client(address, timeout_s=30)
        lock = DistributedLock(client, name, TTL_S)

        def acquire() -> bool:
            return lock.acquire_blocking(KEY, max_duration_s=30)

        release = lambda: lock.release(KEY)  # noqa: E731
        close = client.close
    else:
        redis = RedisLock(int(address))

        def acquire() -> bool:
            while not redis.acquire(KEY):
                pass  # retry at once: the peer's best case for throughput
            return True

        release = lambda: redis.release(KEY)  # noqa: E731
        close = redis.close
    acquire() and release()  # warm-up
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    pairs = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        acquire()
        if not release():
            raise RuntimeError(f"{name} lost a lock it held")
        pairs += 1
    print(json.dumps({"pairs": pairs}), flush=True)
    close()


def contending_pairs_per_s(system: str, address: str, clients: int, seconds: float) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_LOG="warning")
    procs = [subprocess.Popen([sys.executable, __file__, "--contend", system, address, str(seconds), f"c{i}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
             for i in range(clients)]
    try:
        for proc in procs:
            if not json.loads(proc.stdout.readline() or "{}").get("ready"):
                raise RuntimeError(f"a {system} contender did not start")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        counts = [json.loads(proc.stdout.readline())["pairs"] for proc in procs]
    finally:
        for proc in procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            proc.stdout.close()
    return sum(counts) / seconds


# =========================================================================== runs


def run_agentflow(args, work_dir: Path) -> dict:
    from protocols.control import Noop
    from runtime.client import Client
    from runtime.locks import DistributedLock

    os.environ["AGENTFLOW_LOG"] = "warning"  # masters inherit it (agentflow/cluster.py)
    data_dir = Path(tempfile.mkdtemp(prefix="locks-", dir=args.data_dir or work_dir))
    cluster = LocalCluster(data_dir, masters=3)
    client = Client(cluster.master_url, timeout_s=30)
    try:
        cluster.start(client, timeout_s=60)
        lock = DistributedLock(client, "bench-one", TTL_S)
        per_s, samples = sequential_pairs(lambda: lock.acquire(KEY), lambda: lock.release(KEY), args.pairs)
        # The lock layer's ceiling: two plain Raft commits (Noop through Client.propose) per "pair".
        noop = lambda: client.propose(Noop(0)) == 0  # noqa: E731
        raft_per_s, _ = sequential_pairs(noop, noop, args.pairs)
        contended = contending_pairs_per_s("agentflow", cluster.master_url, args.clients, args.seconds)
    finally:
        client.close()
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"per_s": per_s, "p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99), "contended": contended,
            "raft_noop_pairs_per_s": raft_per_s}


def run_redis(args, work_dir: Path, durable: bool = False) -> dict:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="redis-", dir=work_dir)), durable)
    try:
        lock = RedisLock(server.port)
        per_s, samples = sequential_pairs(lambda: lock.acquire(KEY), lambda: lock.release(KEY), args.pairs)
        lock.close()
        contended = contending_pairs_per_s("redis", str(server.port), args.clients, args.seconds)
    finally:
        server.stop()
    return {"per_s": per_s, "p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99), "contended": contended}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--contend":
        contend(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=500, help="sequential pairs of the one-client figures")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of the contending-clients figure")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--data-dir", default=None, help="where the masters' SQLite files go (default: a temp dir)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    peer = redis_version()
    work_dir = Path(tempfile.mkdtemp(prefix="bench-locks-"))
    agentflow_runs, redis_runs, durable_runs = [], [], []
    try:
        for run in range(args.runs):
            agentflow_runs.append(run_agentflow(args, work_dir))
            if peer is not None:
                redis_runs.append(run_redis(args, work_dir))
                durable_runs.append(run_redis(args, work_dir, durable=True))
            print(f"run {run + 1}: agentflow {agentflow_runs[-1]}" + (f" redis {redis_runs[-1]}" if redis_runs else "")
                  + (f" redis-fsync {durable_runs[-1]}" if durable_runs else ""), flush=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    peer_name = peer or "redis (not installed)"
    results = [
        Result("lock_pairs_per_s", "pairs/s", True, [r["per_s"] for r in agentflow_runs], peer_name,
               [r["per_s"] for r in redis_runs]),
        Result("lock_pair_p50_us", "us", False, [r["p50"] for r in agentflow_runs], peer_name,
               [r["p50"] for r in redis_runs]),
        Result("lock_pair_p99_us", "us", False, [r["p99"] for r in agentflow_runs], peer_name,
               [r["p99"] for r in redis_runs]),
        Result(f"lock_pairs_per_s_{args.clients}_clients", "pairs/s", True, [r["contended"] for r in agentflow_runs],
               peer_name, [r["contended"] for r in redis_runs]),
    ]
    # The same peer made durable (one node, every write fsynced, still nothing replicated).
    durable_name = f"{peer_name}, appendfsync always"
    results.append(Result("lock_pairs_per_s_vs_durable_redis", "pairs/s", True, [r["per_s"] for r in agentflow_runs],
                          durable_name, [r["per_s"] for r in durable_runs]))
    results.append(Result(f"lock_pairs_per_s_{args.clients}_clients_vs_durable_redis", "pairs/s", True,
                          [r["contended"] for r in agentflow_runs], durable_name,
                          [r["contended"] for r in durable_runs]))
    # Not a peer: how close the lock layer comes to the Raft commits under it (ratio near 1: it adds little).
    results.append(Result("lock_pairs_per_s_vs_raft_noop_pairs", "pairs/s", True, [r["per_s"] for r in agentflow_runs],
                          "agentflow raft: 2 Noop commits", [r["raft_noop_pairs_per_s"] for r in agentflow_runs]))
    report("locks", results, args.json)


if __name__ == "__main__":
    main()
