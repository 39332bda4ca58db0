"""Payloads the benchmarks' tasks return: rows of JSON-ish data, as a task's result would be.

Kept apart from the benchmarks themselves so that a worker's task process importing it
(``call: "bench.payloads:result_rows"``) imports nothing else: the import is part of the task.
"""

from __future__ import annotations

import functools
import json
import random

TAGS = ("alpha", "beta", "gamma", "delta", "prod", "staging", "eu-west", "us-east", "gpu", "batch")


def json_ish_result(rng: random.Random, size: int) -> list[dict]:
    """Rows as a task would return them: ids, names, numbers, flags, timestamps, paths."""
    rows: list[dict] = []
    total = 0
    while total < size:
        i = len(rows)
        row = {"id": i, "user": f"user-{rng.randrange(100_000)}", "email": f"u{rng.randrange(100_000)}@example.com",
               "score": round(rng.random() * 100, 3), "active": rng.random() < 0.7,
               "tags": rng.sample(TAGS, rng.randint(1, 4)),
               "created": f"2026-11-{rng.randint(1, 30):02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
               "path": f"/data/shard-{rng.randrange(64):02d}/part-{rng.randrange(10_000):05d}.parquet"}
        rows.append(row)
        total += len(json.dumps(row))
    return rows


@functools.lru_cache(maxsize=4)
def _rows(size: int) -> tuple:
    return tuple(json_ish_result(random.Random(size), size))


def result_rows(size: int) -> list[dict]:
    """About ``size`` bytes (as JSON) of rows, the same on every call (made once per process)."""
    return list(_rows(size))
