"""etcd locks in the lock benchmark, through the Python etcd3 client (runs in .venv-peers/etcd3:
etcd3 0.12's generated code needs protobuf 3).

    python etcd_locks.py sequential ENDPOINTS PAIRS RECIPE     # one JSON line: per_s, p50_us, p99_us
    python etcd_locks.py contend ENDPOINTS SECONDS NAME THREADS KEYS   # bench/locks.py's contender

ENDPOINTS is "host:port,..."; every client talks to the current leader (found through any member),
as AgentFlow's clients do. Two recipes:

* ``session`` (the default, etcd's best case; the shape of the Go client's concurrency.Mutex):
  one lease per client, granted once; acquire is one transaction "create the key with our lease
  if it does not exist"; release is one transaction "delete it if it holds our token". Two
  fsynced Raft writes per pair. A waiter watches the key from the holder's revision on, so a
  release between its failed attempt and its watch is not missed; each watch is bounded (1 s).
* ``library``: the etcd3 package's own ``Lock``, which grants a new lease on every acquire (three
  writes per pair) and can miss a release while it starts its watch (bounded by its timeout).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child import emit, percentile, run_contenders, sequential_pairs  # noqa: E402

import etcd3  # noqa: E402
from etcd3 import exceptions  # noqa: E402

LEASE_TTL_S = 60
WATCH_S = 1.0
KEY = "/bench-lock/one"


def leader_client(endpoints: str) -> etcd3.Etcd3Client:
    host, port = endpoints.split(",")[0].rsplit(":", 1)
    probe = etcd3.client(host=host, port=int(port), timeout=10)
    leader_url = probe.status().leader.client_urls[0]  # "http://127.0.0.1:PORT"
    probe.close()
    host, port = leader_url.split("//", 1)[1].rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=10)


class SessionLock:
    def __init__(self, client: etcd3.Etcd3Client) -> None:
        self.client = client
        self.lease = client.lease(LEASE_TTL_S)
        self.token = uuid.uuid4().hex.encode()

    def try_acquire(self, key: str) -> int | None:
        """None when ours; else the mod revision of the holder's key (where to watch from)."""
        tx = self.client.transactions
        ok, responses = self.client.transaction(compare=[tx.create(key) == 0],
                                                success=[tx.put(key, self.token, lease=self.lease)],
                                                failure=[tx.get(key)])
        if ok:
            return None
        held = responses[0]
        return held[0][1].mod_revision if held else 0

    def acquire(self, key: str, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while (revision := self.try_acquire(key)) is not None:
            if time.monotonic() > deadline:
                return False
            try:
                self.client.watch_once(key, timeout=WATCH_S, start_revision=revision + 1)
            except exceptions.WatchTimedOut:
                pass
        return True

    def release(self, key: str) -> bool:
        tx = self.client.transactions
        ok, _ = self.client.transaction(compare=[tx.value(key) == self.token], success=[tx.delete(key)],
                                        failure=[])
        return ok


def sequential(endpoints: str, pairs: int, recipe: str) -> None:
    client = leader_client(endpoints)
    if recipe == "session":
        lock = SessionLock(client)
        acquire, release = (lambda: lock.acquire(KEY)), (lambda: lock.release(KEY))
    else:
        library = client.lock("bench-one", ttl=LEASE_TTL_S)
        acquire, release = (lambda: library.acquire(timeout=30)), library.release
    per_s, samples = sequential_pairs(acquire, release, pairs)
    emit({"per_s": per_s, "p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99)})
    client.close()


def contend(endpoints: str, seconds: float, name: str, threads: int, keys: str) -> None:
    """bench/locks.py's contender on etcd: ``threads`` clients, a connection and session each."""
    locks = [SessionLock(leader_client(endpoints)) for _ in range(threads)]
    run_contenders([(lock.acquire, lock.release) for lock in locks],
                   [KEY if keys == "one" else f"/bench-lock/{name}-{i}" for i in range(threads)], seconds, name)
    # Closing the clients would crash etcd3's watch threads on the closed channel: just leave.
    os._exit(0)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "sequential":
        sequential(rest[0], int(rest[1]), rest[2])
    else:
        contend(rest[0], float(rest[1]), rest[2], int(rest[3]), rest[4])
