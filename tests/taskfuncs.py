"""Functions that workflow tasks `call` in the integration tests."""

import time

# About ``size`` bytes (as JSON) of rows such as a task returns, the same on every call: the
# benchmarks' payload, so that the compression tests and bench/compression.py compress alike.
from bench.payloads import result_rows as rows  # noqa: F401 - called as tests.taskfuncs:rows


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
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time()}
