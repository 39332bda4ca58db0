"""Lock benchmark: AgentFlow's replicated locks (3 masters) vs etcd (3 members), with Redis as a reference.

    .venv/bin/python bench/locks.py [--runs 3] [--pairs 500] [--seconds 4] [--clients 8] [--keys 64]
                                    [--json FILE] [--data-dir DIR]

A *pair* is one acquire plus one release of the same key, measured end to end by the client.

* One client: ``--pairs`` sequential pairs from this process: pairs/s, p50 and p99 per pair.
* Contending clients: ``--clients`` processes (8) loop on one key for ``--seconds``; pairs/s is
  the sum of their completed pairs over the time. AgentFlow clients wait in the lock's FIFO queue
  (``acquire_blocking``: the grant is pushed to them); etcd clients watch the key from the
  holder's revision; Redis clients retry ``SET NX`` at once when it fails (no sleep: the peer's
  best case for throughput).
* Many independent locks: ``--keys`` clients (64: 8 processes of 8 threads, a connection or
  session each) each on a key of its own, for ``--seconds``: ``lock_pairs_per_s_64_keys``.
* AgentFlow runs each of the three twice: releasing as etcd's clients do (waiting for the
  commit), and with ``release(wait=False)`` (one-way: the rows ending ``_release_nowait``); the
  acquire waits for its commit in both.
* The lock layer's ceiling, in the same run: pairs of two plain Raft commits (``Noop`` through
  ``Client.propose``), reported as ``lock_pairs_per_s_vs_raft_noop_pairs`` (its "peer" is AgentFlow's
  own Raft, not another system).

AgentFlow: three master processes started by agentflow/cluster.py (``agentflow master``), a fresh
cluster per run; every acquire and release is a Raft command durable in SQLite (WAL,
synchronous=FULL: an fsync) on a majority before it is answered. Masters log at warning level.
``--data-dir`` puts the masters' and etcd's data elsewhere; the default is a temporary directory
on the disk, so the figures include its fsync.

Peer: etcd (``etcd`` on PATH; Debian's etcd-server 3.4), three members on 127.0.0.1 with its
default fsync of every Raft write, a fresh cluster per run, driven by the Python etcd3 client in
its own venv (.venv-peers/etcd3, made through pip on first use) with the session recipe of
bench/peers/etcd_locks.py (one lease per client, two transactions per pair: etcd's best case);
the etcd3 package's own ``Lock`` (a lease per acquire) is measured too, for the one-client
figures. Reference rows: ``redis-server`` on one node, with persistence off (``--save ""
--appendonly no``: the issue 5 comparison, nothing replicated or fsynced) and durable
(``--appendonly yes --appendfsync always``), spoken to with a minimal RESP client (``SET key
token NX PX ttl`` and a Lua compare-and-delete). A peer whose binary is missing is reported
missing (``peer_value: null``) with how to install it, and the other rows still run. Every
process started here is stopped here, and every wait has a deadline.
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

from bench.common import PEERS, Result, peer_python, percentile, report, run_child  # noqa: E402
from bench.peers.child import read_line, run_contenders, sequential_pairs  # noqa: E402
from agentflow.cluster import LocalCluster, find_free_ports, stop_process  # noqa: E402

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
        stop_process(self.proc)


# =========================================================================== etcd (3 members)


ETCD_INSTALL = "apt-get install etcd-server etcd-client"
ETCD_REQUIREMENTS = ["etcd3==0.12.0", "protobuf<4"]  # etcd3's generated code predates protobuf 4


def etcd_version() -> str | None:
    binary = shutil.which("etcd")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    return "etcd " + out.split()[2] if out.startswith("etcd Version:") else "etcd ?"


class EtcdCluster:
    """Three etcd members on 127.0.0.1, each fsyncing its Raft log (etcd's default)."""

    def __init__(self, data_dir: Path) -> None:
        ports = find_free_ports(3, offsets=(0, 1))  # each member's client and peer port
        names = [f"etcd-{i + 1}" for i in range(3)]
        initial = ",".join(f"{name}=http://{HOST}:{port + 1}" for name, port in zip(names, ports))
        self.endpoints = ",".join(f"{HOST}:{port}" for port in ports)
        self.procs = []
        for name, port in zip(names, ports):
            client, peer = f"http://{HOST}:{port}", f"http://{HOST}:{port + 1}"
            self.procs.append(subprocess.Popen(
                ["etcd", "--name", name, "--data-dir", str(data_dir / name), "--listen-client-urls", client,
                 "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls",
                 peer, "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token",
                 data_dir.name, "--logger", "zap", "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while subprocess.run(["etcdctl", "--endpoints", self.endpoints, "--command-timeout=2s", "endpoint", "health"],
                             capture_output=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=30).returncode:
            if time.monotonic() > deadline or any(proc.poll() is not None for proc in self.procs):
                self.stop()
                raise RuntimeError("the etcd members did not become healthy within 60 s")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# =========================================================================== contending clients (child processes)


def contend(system: str, address: str, seconds: float, name: str, threads: int, keys: str) -> None:
    """Child: ``threads`` clients loop acquire+release, all on KEY (``keys`` "one") or each on a key
    of its own, for ``seconds`` after "go" on stdin; prints their summed count. ``system``
    "agentflow-nowait" releases with ``wait=False``."""
    if system.startswith("agentflow"):
        from runtime.client import Client
        from runtime.locks import DistributedLock

        client = Client(address, timeout_s=30)
        locks = [DistributedLock(client, f"{name}-{i}", TTL_S) for i in range(threads)]
        wait = system != "agentflow-nowait"
        pairs = [(lambda key, lock=lock: lock.acquire_blocking(key, max_duration_s=30),
                  lambda key, lock=lock: lock.release(key, wait=wait)) for lock in locks]
        closers = [client.close]
    else:
        redis_locks = [RedisLock(int(address)) for _ in range(threads)]

        def spin(lock: RedisLock):
            def acquire(key: str) -> bool:
                while not lock.acquire(key):
                    pass  # retry at once: the peer's best case for throughput
                return True
            return acquire

        pairs = [(spin(lock), lock.release) for lock in redis_locks]
        closers = [lock.close for lock in redis_locks]
    run_contenders(pairs, [KEY if keys == "one" else f"{KEY}-{name}-{i}" for i in range(threads)], seconds, name)
    for close in closers:
        close()


def contending_pairs_per_s(argv, processes: int, seconds: float) -> float:
    """Start ``processes`` contenders (``argv(name)`` each), wait until all are ready, say "go" to
    all, and sum their pairs over ``seconds``. Every read has a deadline."""
    env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_LOG="warning")
    procs = [subprocess.Popen(argv(f"c{i}"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env=env) for i in range(processes)]
    try:
        for proc in procs:
            read_line(proc, 120, "a contender", '{"ready"')
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        counts = [json.loads(read_line(proc, seconds + 90, "a contender", '{"pairs"'))["pairs"] for proc in procs]
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


def ours(system: str, address: str, seconds: float, threads: int, keys: str):
    """The argv maker of this file's own contenders (AgentFlow and Redis)."""
    return lambda name: [sys.executable, __file__, "--contend", system, address, str(seconds), name, str(threads),
                         keys]


def contended_runs(args, argv_maker) -> dict:
    """The contending figures: ``--clients`` processes on one key, ``--keys`` clients on their own keys."""
    per_process = max(1, args.keys // 8)
    return {"contended": contending_pairs_per_s(argv_maker(1, "one"), args.clients, args.seconds),
            "keys": contending_pairs_per_s(argv_maker(per_process, "own"), args.keys // per_process, args.seconds)}


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
        nowait_per_s, nowait_samples = sequential_pairs(lambda: lock.acquire(KEY),
                                                        lambda: lock.release(KEY, wait=False), args.pairs)
        # The lock layer's ceiling: two plain Raft commits (Noop through Client.propose) per "pair".
        noop = lambda: client.propose(Noop(0)) == 0  # noqa: E731
        raft_per_s, _ = sequential_pairs(noop, noop, args.pairs)
        url = cluster.master_url
        contended = contended_runs(args, lambda threads, keys: ours("agentflow", url, args.seconds, threads, keys))
        nowait = contended_runs(args, lambda threads, keys: ours("agentflow-nowait", url, args.seconds, threads, keys))
    finally:
        client.close()
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"per_s": per_s, "p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99),
            "raft_noop_pairs_per_s": raft_per_s, **contended,
            "nowait_per_s": nowait_per_s, "nowait_p50": percentile(nowait_samples, 0.5),
            "nowait_p99": percentile(nowait_samples, 0.99),
            "nowait_contended": nowait["contended"], "nowait_keys": nowait["keys"]}


def run_redis(args, work_dir: Path, durable: bool = False) -> dict:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="redis-", dir=work_dir)), durable)
    try:
        lock = RedisLock(server.port)
        per_s, samples = sequential_pairs(lambda: lock.acquire(KEY), lambda: lock.release(KEY), args.pairs)
        lock.close()
        port = str(server.port)
        contended = contended_runs(args, lambda threads, keys: ours("redis", port, args.seconds, threads, keys))
    finally:
        server.stop()
    return {"per_s": per_s, "p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99), **contended}


def run_etcd(args, work_dir: Path, python: str) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="etcd-", dir=args.data_dir or work_dir))
    cluster = EtcdCluster(data_dir)
    script = str(PEERS / "etcd_locks.py")
    try:
        one = run_child([python, script, "sequential", cluster.endpoints, str(args.pairs), "session"], 300)
        library = run_child([python, script, "sequential", cluster.endpoints, str(args.pairs), "library"], 300)
        endpoints = cluster.endpoints
        contended = contended_runs(args, lambda threads, keys: lambda name: [
            python, script, "contend", endpoints, str(args.seconds), name, str(threads), keys])
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {**one, "library_per_s": library["per_s"], "library_p50": library["p50"], **contended}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--contend":
        system, address, seconds, name, threads, keys = sys.argv[2:8]
        contend(system, address, float(seconds), name, int(threads), keys)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=500, help="sequential pairs of the one-client figures")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each contending figure")
    parser.add_argument("--clients", type=int, default=8, help="contending client processes on one key")
    parser.add_argument("--keys", type=int, default=64, help="clients on keys of their own (8 processes)")
    parser.add_argument("--data-dir", default=None, help="where the masters' and etcd's files go (default: a temp dir)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    redis = redis_version()
    etcd = etcd_version()
    etcd_python, why = peer_python("etcd3", ETCD_REQUIREMENTS) if etcd else (None, "")
    if etcd is None:
        print(f"etcd is not installed ({ETCD_INSTALL}): its rows are reported missing", file=sys.stderr)
    elif etcd_python is None:
        print(f"no etcd3 client venv ({why}): the etcd rows are reported missing", file=sys.stderr)
    if redis is None:
        print("redis-server is not installed (apt-get install redis-server): its rows are reported missing",
              file=sys.stderr)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-locks-"))
    runs: dict[str, list[dict]] = {"agentflow": [], "etcd": [], "redis": [], "redis-fsync": []}
    try:
        for run in range(args.runs):
            runs["agentflow"].append(run_agentflow(args, work_dir))
            if etcd_python:
                runs["etcd"].append(run_etcd(args, work_dir, etcd_python))
            if redis is not None:
                runs["redis"].append(run_redis(args, work_dir))
                runs["redis-fsync"].append(run_redis(args, work_dir, durable=True))
            print(f"run {run + 1}: " + " ".join(f"{name} {found[-1]}" for name, found in runs.items() if found),
                  flush=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    etcd_name = f"{etcd} (3 members, fsync), etcd3 client, session lock" if etcd_python else \
        f"etcd (missing: {ETCD_INSTALL})" if etcd is None else "etcd (no etcd3 client venv)"
    redis_name = redis or "redis (missing: apt-get install redis-server)"
    durable_name = f"{redis_name}, appendfsync always"
    keys = f"lock_pairs_per_s_{args.keys}_keys"
    contended = f"lock_pairs_per_s_{args.clients}_clients"

    def rows(suffix: str, peer: str, peer_runs: list[dict], mode: str = "") -> list[Result]:
        """AgentFlow's figures (``mode`` "nowait_": those of ``release(wait=False)``) against a peer's."""
        def of(field: str, found: list[dict], prefix: str = "") -> list[float]:
            return [r[prefix + field] for r in found]

        af = runs["agentflow"]
        suffix = ("_release_nowait" if mode else "") + suffix
        return [
            Result(f"lock_pairs_per_s{suffix}", "pairs/s", True, of("per_s", af, mode), peer, of("per_s", peer_runs)),
            Result(f"lock_pair_p50_us{suffix}", "us", False, of("p50", af, mode), peer, of("p50", peer_runs)),
            Result(f"lock_pair_p99_us{suffix}", "us", False, of("p99", af, mode), peer, of("p99", peer_runs)),
            Result(f"{contended}{suffix}", "pairs/s", True, of("contended", af, mode), peer,
                   of("contended", peer_runs)),
            Result(f"{keys}{suffix}", "pairs/s", True, of("keys", af, mode), peer, of("keys", peer_runs)),
        ]

    results = rows("", etcd_name, runs["etcd"]) + rows("", etcd_name, runs["etcd"], "nowait_")
    results.append(Result("lock_pairs_per_s_vs_etcd3_library_lock", "pairs/s", True,
                          [r["per_s"] for r in runs["agentflow"]], f"{etcd or 'etcd'}, the etcd3 package's Lock"
                          " (a lease per acquire)", [r["library_per_s"] for r in runs["etcd"]]))
    results += rows("_vs_redis", f"{redis_name} (no persistence, one node)", runs["redis"])
    results += rows("_vs_durable_redis", f"{durable_name} (one node)", runs["redis-fsync"])
    # Not a peer: how close the lock layer comes to the Raft commits under it (ratio near 1: it adds little).
    results.append(Result("lock_pairs_per_s_vs_raft_noop_pairs", "pairs/s", True,
                          [r["per_s"] for r in runs["agentflow"]], "agentflow raft: 2 Noop commits",
                          [r["raft_noop_pairs_per_s"] for r in runs["agentflow"]]))
    report("locks", results, args.json)


if __name__ == "__main__":
    main()
