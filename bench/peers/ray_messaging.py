"""Ray named actors in the messaging benchmark (runs in .venv-peers/ray).

    python ray_messaging.py --requests N --messages N --broadcasts N --error-deadline-s S

One run: a local Ray instance (GCS, raylet, one worker process per actor) started by this
process; named actors looked up by name (``ray.get_actor``), method calls between processes:
the driver to an echo actor, and an actor to the echo actor (actor to actor). A "broadcast" is
one call to each of 8 subscriber actors (Ray has no publish). Every ``ray.get`` has a timeout.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child import PAYLOAD, emit, percentile, error_figures, ray_init, ray_local_only, request_figures  # noqa: E402

ray_local_only()
import ray  # noqa: E402

SUBSCRIBERS = 8
NAMESPACE = "bench"


@ray.remote(num_cpus=0)
class Echo:
    def echo(self, message):
        return message

    def pid(self) -> int:
        return os.getpid()

    def hold(self, message):
        time.sleep(60)  # the call in flight when this actor's process is killed
        return message


@ray.remote(num_cpus=0)
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def add(self, message) -> None:
        self.count += 1

    def read(self) -> int:
        return self.count


@ray.remote(num_cpus=0)
class Relay:
    """Times sequential calls from this actor to the named echo actor: actor to actor."""

    def run(self, requests: int) -> list[float]:
        echo = ray.get_actor("echo", namespace=NAMESPACE)
        ray.get(echo.echo.remote(PAYLOAD), timeout=30)
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            ray.get(echo.echo.remote(PAYLOAD), timeout=30)
            samples.append((time.perf_counter() - started) * 1e6)
        return samples


def time_to_error_ms(call, deadline_s: float, started: float | None = None) -> tuple[float, str]:
    """(ms until ``call()`` raised, what it raised) or (the deadline, "no error within S s")."""
    started = time.perf_counter() if started is None else started
    try:
        call()
        return (time.perf_counter() - started) * 1000, "answered (no error)"
    except ray.exceptions.GetTimeoutError:
        return deadline_s * 1000, f"no error within {deadline_s:g} s"
    except Exception as exc:  # the error we are timing
        return (time.perf_counter() - started) * 1000, type(exc).__name__


def measure(args) -> dict:
    wait_s = args.error_deadline_s
    # The creator's handles are kept: a non-detached actor dies with its last handle.
    owned = [Echo.options(name="echo").remote(), Counter.options(name="counter").remote(),
             *(Counter.options(name=f"sub{i}").remote() for i in range(SUBSCRIBERS)),
             Echo.options(name="victim", max_restarts=0).remote()]
    relay = Relay.remote()
    echo = ray.get_actor("echo", namespace=NAMESPACE)  # by name, as another process would
    counter = ray.get_actor("counter", namespace=NAMESPACE)
    subscribers = [ray.get_actor(f"sub{i}", namespace=NAMESPACE) for i in range(SUBSCRIBERS)]
    victim = ray.get_actor("victim", namespace=NAMESPACE)
    for _ in range(50):  # warm-up: every actor's process is up and connected
        ray.get(echo.echo.remote(PAYLOAD), timeout=120)
    ray.get([a.read.remote() for a in (counter, *subscribers)] + [victim.pid.remote(), relay.run.remote(1)],
            timeout=120)

    samples = []
    for _ in range(args.requests):
        started = time.perf_counter()
        ray.get(echo.echo.remote(PAYLOAD), timeout=wait_s)
        samples.append((time.perf_counter() - started) * 1e6)
    actor_samples = ray.get(relay.run.remote(args.requests), timeout=300)

    started = time.perf_counter()
    ray.get([echo.echo.remote(PAYLOAD) for _ in range(args.requests)], timeout=300)
    pipelined_requests_per_s = args.requests / (time.perf_counter() - started)

    # One-way: calls whose results are never fetched; an actor runs its calls in order, so the
    # read after them returns once all have run.
    base = ray.get(counter.read.remote(), timeout=wait_s)
    started = time.perf_counter()
    for _ in range(args.messages):
        counter.add.remote(PAYLOAD)
    count = ray.get(counter.read.remote(), timeout=300)
    msgs_per_s = args.messages / (time.perf_counter() - started)
    assert count == base + args.messages, (count, base, args.messages)

    started = time.perf_counter()
    for _ in range(args.broadcasts):
        for subscriber in subscribers:
            subscriber.add.remote(PAYLOAD)
    counts = ray.get([s.read.remote() for s in subscribers], timeout=300)
    broadcasts_per_s = args.broadcasts / (time.perf_counter() - started)
    assert counts == [args.broadcasts] * SUBSCRIBERS, counts

    unknown = time_to_error_ms(lambda: ray.get_actor("nosuch", namespace=NAMESPACE), wait_s)

    victim_pid = ray.get(victim.pid.remote(), timeout=wait_s)
    in_flight = victim.hold.remote(PAYLOAD)
    time.sleep(0.3)  # let it reach the actor
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.perf_counter()
    killed = time_to_error_ms(lambda: ray.get(in_flight, timeout=wait_s), wait_s, killed_at)
    after = time_to_error_ms(lambda: ray.get(victim.echo.remote(PAYLOAD), timeout=wait_s), wait_s)
    return {
        **request_figures(samples),
        "actor_to_actor_p50_us": percentile(actor_samples, 0.5),
        "actor_to_actor_p99_us": percentile(actor_samples, 0.99),
        "pipelined_requests_per_s": pipelined_requests_per_s,
        "msgs_per_s": msgs_per_s,
        "broadcast_msgs_per_s": broadcasts_per_s,
        **error_figures(unknown, killed, after),
        "actors": len(owned) + 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--broadcasts", type=int, default=1000)
    parser.add_argument("--error-deadline-s", type=float, default=10.0)
    args = parser.parse_args()
    ray_init(ray, namespace=NAMESPACE)
    try:
        result = measure(args)
    finally:
        ray.shutdown()
    emit({"peer": f"ray {ray.__version__} (named actors)", **result})


if __name__ == "__main__":
    main()
