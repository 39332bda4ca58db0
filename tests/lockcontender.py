"""A client process that contends for one lock and increments a fenced counter file under it.

    python -m tests.lockcontender MASTER_URLS KEY OWNER COUNTER_FILE ITERATIONS TTL_S

The counter file is the protected resource, and it fences: it keeps the last fencing token it
accepted and the holder inside the critical section now. Each turn: wait for the lock, then
read the file and check that nobody else is inside (overlap) and that our token is newer than
the last one accepted (a stale token is refused, as a fenced store would), write ourselves in
with the incremented count, step out, release. Writes are atomic (rename). Prints one JSON
line per turn and a final {"done": ..., "overlaps": ..., "stale": ...}; exits 0.
"""

from __future__ import annotations

import json
import os
import sys

from runtime.client import Client
from runtime.locks import DistributedLock


def read_counter(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def write_counter(path: str, document: dict) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        json.dump(document, f)
    os.replace(temporary, path)


def main() -> int:
    urls, key, owner, path, iterations, ttl_s = sys.argv[1:7]
    overlaps = stale = 0
    with Client(urls, timeout_s=20) as client:
        lock = DistributedLock(client, owner, float(ttl_s))
        for _ in range(int(iterations)):
            lock.acquire_blocking(key, {"pid": os.getpid()}, max_duration_s=60)
            token = lock.tokens[key]
            counter = read_counter(path)
            if counter["inside"] is not None:
                overlaps += 1
            if token <= counter["last_token"]:
                stale += 1  # refused: the store keeps its newer token and count
            else:
                counter.update(count=counter["count"] + 1, last_token=token, inside=owner)
                write_counter(path, counter)
                counter["inside"] = None
                write_counter(path, counter)
            print(json.dumps({"owner": owner, "token": token}), flush=True)
            lock.release(key)
    print(json.dumps({"done": int(iterations), "overlaps": overlaps, "stale": stale}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
