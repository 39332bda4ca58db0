"""AutoGen's distributed gRPC runtime in the messaging benchmark (runs in .venv-peers/autogen).

    python autogen_messaging.py run --requests N --messages N --broadcasts N --error-deadline-s S

One run: a ``GrpcWorkerAgentRuntimeHost`` process, a worker runtime process hosting the echo,
counter and 8 subscriber agents, a second worker runtime process hosting a "victim" agent (kill
-9'd at the end), and the caller's own worker runtime in this process. Every message goes caller
-> host -> worker over gRPC. Serializers are registered for every message type on every runtime
(without them a reply cannot be decoded and the caller waits forever), and every wait here is
bounded by ``asyncio.wait_for``: a wait that runs out is reported as "no error within S s", the
deadline being a lower bound of the time, not a figure of its own. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child import PAYLOAD, Helper, emit, free_port, error_figures, request_figures, wait_stdin_closed  # noqa: E402

from autogen_core import (  # noqa: E402
    AgentId,
    MessageContext,
    RoutedAgent,
    TopicId,
    TypeSubscription,
    message_handler,
    try_get_known_serializers_for_type,
)
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime, GrpcWorkerAgentRuntimeHost  # noqa: E402

SUBSCRIBERS = 8
READY_TIMEOUT_S = 60


@dataclass
class Payload:
    content: dict


@dataclass
class CountQuery:
    pass


@dataclass
class Count:
    n: int


class Echo(RoutedAgent):
    @message_handler
    async def on_payload(self, message: Payload, ctx: MessageContext) -> Payload:
        return message


class Counter(RoutedAgent):
    """Counts what is published to it; a CountQuery answers the count."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.count = 0

    @message_handler
    async def on_payload(self, message: Payload, ctx: MessageContext) -> None:
        self.count += 1

    @message_handler
    async def on_query(self, message: CountQuery, ctx: MessageContext) -> Count:
        return Count(self.count)


class Sleeper(RoutedAgent):
    """Holds every request for a minute: the call in flight when its worker is killed."""

    @message_handler
    async def on_payload(self, message: Payload, ctx: MessageContext) -> Payload:
        await asyncio.sleep(60)
        return message


async def worker_runtime(host_address: str) -> GrpcWorkerAgentRuntime:
    runtime = GrpcWorkerAgentRuntime(host_address=host_address)
    for kind in (Payload, CountQuery, Count):
        runtime.add_message_serializer(try_get_known_serializers_for_type(kind))
    await runtime.start()
    return runtime


# --------------------------------------------------------------------------- helper processes


async def serve_host(port: int) -> None:
    host = GrpcWorkerAgentRuntimeHost(address=f"127.0.0.1:{port}")
    host.start()
    await asyncio.sleep(0.5)  # the gRPC server binds in the background task just started
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, wait_stdin_closed)
    await host.stop(grace=0)


async def serve_worker(host_address: str, role: str) -> None:
    runtime = await worker_runtime(host_address)
    if role == "agents":
        await Echo.register(runtime, "echo", lambda: Echo("echo"))
        await Counter.register(runtime, "counter", lambda: Counter("counter"))
        await runtime.add_subscription(TypeSubscription(topic_type="count", agent_type="counter"))
        for i in range(SUBSCRIBERS):
            await Counter.register(runtime, f"sub{i}", lambda: Counter("subscriber"))
            await runtime.add_subscription(TypeSubscription(topic_type="bcast", agent_type=f"sub{i}"))
    else:
        await Sleeper.register(runtime, "victim", lambda: Sleeper("victim"))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, wait_stdin_closed)
    await runtime.stop()


# --------------------------------------------------------------------------- the caller


async def bounded(awaitable, timeout_s: float, what: str):
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except asyncio.TimeoutError:
        raise RuntimeError(f"autogen: {what} did not finish within {timeout_s} s") from None


async def wait_count(runtime, agent: AgentId, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        count = (await bounded(runtime.send_message(CountQuery(), agent), timeout_s, "a count query")).n
        if count >= expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"autogen: {agent} has {count} of {expected} messages after {timeout_s} s")
        await asyncio.sleep(0.005)


async def time_to_error_ms(call, deadline_s: float, started: float | None = None) -> tuple[float, str]:
    """(ms until ``call`` raised, what it raised) or (the deadline, "no error within S s")."""
    started = time.perf_counter() if started is None else started
    try:
        await asyncio.wait_for(call, deadline_s)
        return (time.perf_counter() - started) * 1000, "answered (no error)"
    except asyncio.TimeoutError:
        return deadline_s * 1000, f"no error within {deadline_s:g} s"
    except Exception as exc:  # the error we are timing
        return (time.perf_counter() - started) * 1000, type(exc).__name__


async def measure(args) -> dict:
    port = free_port()
    address = f"127.0.0.1:{port}"
    me = [sys.executable, __file__]
    host = Helper([*me, "host", str(port)], READY_TIMEOUT_S)
    helpers = [host]
    try:
        agents = Helper([*me, "worker", address, "agents"], READY_TIMEOUT_S)
        helpers.append(agents)
        victim = Helper([*me, "worker", address, "victim"], READY_TIMEOUT_S)
        helpers.append(victim)
        runtime = await worker_runtime(address)
        result = await measure_with(runtime, args, victim)
        await bounded(runtime.stop(), 10, "stopping the caller's runtime")
        return result
    finally:
        for helper in reversed(helpers):
            helper.stop()


async def measure_with(runtime, args, victim: Helper) -> dict:
    echo, counter = AgentId("echo", "default"), AgentId("counter", "default")
    payload = Payload(PAYLOAD)
    wait_s = args.error_deadline_s
    for _ in range(50):  # warm-up: connections, agent instances
        await bounded(runtime.send_message(payload, echo), wait_s, "a warm-up request")

    samples = []
    for _ in range(args.requests):
        started = time.perf_counter()
        await bounded(runtime.send_message(payload, echo), wait_s, "a request")
        samples.append((time.perf_counter() - started) * 1e6)

    # Pipelined requests: up to `window` in flight at once.
    started = time.perf_counter()
    window = 500
    for first in range(0, args.requests, window):
        calls = [runtime.send_message(payload, echo) for _ in range(min(window, args.requests - first))]
        await bounded(asyncio.gather(*calls), 60, "a window of pipelined requests")
    pipelined_requests_per_s = args.requests / (time.perf_counter() - started)

    # One-way: publish to the counter's topic, then ask for the count until all have arrived.
    base = (await bounded(runtime.send_message(CountQuery(), counter), wait_s, "a count query")).n
    started = time.perf_counter()
    for _ in range(args.messages):
        await runtime.publish_message(payload, TopicId("count", "default"))
    await wait_count(runtime, counter, base + args.messages, 120)
    msgs_per_s = args.messages / (time.perf_counter() - started)

    # Broadcast: each publication reaches the 8 subscriber agents.
    started = time.perf_counter()
    for _ in range(args.broadcasts):
        await runtime.publish_message(payload, TopicId("bcast", "default"))
    for i in range(SUBSCRIBERS):
        await wait_count(runtime, AgentId(f"sub{i}", "default"), args.broadcasts, 120)
    broadcasts_per_s = args.broadcasts / (time.perf_counter() - started)

    unknown = await time_to_error_ms(
        runtime.send_message(payload, AgentId("nosuch", "default")), wait_s)

    # A request in flight to the victim when its worker is killed, then a request after the kill.
    in_flight = asyncio.ensure_future(runtime.send_message(payload, AgentId("victim", "default")))
    await asyncio.sleep(0.3)  # let it reach the victim's handler
    victim.kill9()
    killed_at = time.perf_counter()
    killed = await time_to_error_ms(in_flight, wait_s, killed_at)
    after = await time_to_error_ms(
        runtime.send_message(payload, AgentId("victim", "default")), wait_s)
    return {
        **request_figures(samples),
        "pipelined_requests_per_s": pipelined_requests_per_s,
        "msgs_per_s": msgs_per_s,
        "broadcast_msgs_per_s": broadcasts_per_s,
        **error_figures(unknown, killed, after),
    }


def main() -> None:
    logging.disable(logging.CRITICAL)  # the runtimes log every failed delivery; results only here
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["run", "host", "worker"])
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--broadcasts", type=int, default=1000)
    parser.add_argument("--error-deadline-s", type=float, default=10.0)
    args = parser.parse_args()
    if args.role == "host":
        asyncio.run(serve_host(int(args.rest[0])))
    elif args.role == "worker":
        asyncio.run(serve_worker(*args.rest))
    else:
        from importlib.metadata import version

        result = asyncio.run(measure(args))
        emit({"peer": f"autogen {version('autogen-core')} (grpc runtime)", **result})


if __name__ == "__main__":
    main()
