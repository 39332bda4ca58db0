"""Functions that workflow tasks `call` in the integration tests."""

import json
import random


def produce(n: int) -> list[int]:
    return list(range(n))


def consume(inputs: dict) -> int:
    return sum(inputs["produce"]) * 2


def total(inputs):
    return inputs["solve"]["doubled"]


def blob(size: int) -> str:
    return "x" * size


def sizes(inputs: dict) -> dict:
    return {name: len(value) for name, value in inputs.items()}


def timed(seconds: float) -> dict:
    """Take ``seconds`` (a task that runs a while); when it ran, on the machine's wall clock."""
    import time

    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time()}


def rows(size: int) -> list[dict]:
    """About ``size`` bytes (as JSON) of rows such as a task returns: ids, names, numbers, flags,
    paths; compressible as real results are, and the same on every call."""
    rng = random.Random(size)
    out: list[dict] = []
    total = 0
    while total < size:
        row = {"id": len(out), "user": f"user-{rng.randrange(100_000)}", "score": round(rng.random() * 100, 3),
               "active": rng.random() < 0.7, "path": f"/data/shard-{rng.randrange(64):02d}/part-{rng.randrange(10_000):05d}"}
        out.append(row)
        total += len(json.dumps(row))
    return out
