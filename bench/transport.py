"""Transport benchmark: AgentFlow remote tell/ask between two processes vs raw pyzmq+msgpack.

    .venv/bin/python bench/transport.py [--runs 3] [--messages 200000] [--asks 5000] [--json FILE]

In one run, against servers in other processes on 127.0.0.1:
* raw DEALER->ROUTER, one msgpack message per frame (what a plain user writes), and with 64
  messages per frame (the batched ceiling): pipelined echo (window 1000, the probe's measure),
  one-way messages/s, and one-outstanding round trips;
* AgentFlow: pipelined remote ``tell`` to a counting actor, and ``ask`` from a user thread to a
  pinned echo actor and to a pykka (threaded) echo actor; and the blocking ask every ``Client``
  call makes (``runtime.client.DirectAsks``: sent and answered on the caller's own socket).

Nothing here waits without a deadline: a client's receive gives up after RECV_TIMEOUT_S with an
error naming what it waited for, and the servers' ROUTERs never drop a reply (no send high-water
mark, ROUTER_MANDATORY), so a lost reply cannot be what a figure measures, nor leave a client
waiting.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, percentile, report  # noqa: E402
from bench.peers.child import PAYLOAD, read_line  # noqa: E402
from runtime.actor import Actor  # noqa: E402
from runtime.client import DirectAsks  # noqa: E402
from runtime.node import Node  # noqa: E402

RECV_TIMEOUT_S = 10.0  # no reply for this long: the benchmark fails, naming the wait


# --------------------------------------------------------------------------- servers (child process)

def server_socket(context: zmq.Context) -> zmq.Socket:
    """A ROUTER that never drops a reply: no send high-water mark (a client bounds what it has in
    flight), and ROUTER_MANDATORY so a reply to a route that is gone fails instead of vanishing."""
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"tcp://127.0.0.1:{port}", flush=True)
    return sock


def reply(sock: zmq.Socket, route: bytes, data: bytes) -> None:
    try:
        sock.send_multipart([route, data])
    except zmq.ZMQError:  # EHOSTUNREACH: that client has gone; its reply has no one to reach
        pass


def serve_raw_echo() -> None:
    """Decodes and re-encodes every frame it echoes, as a raw server doing real work would."""
    context = zmq.Context()
    sock = server_socket(context)
    while True:
        route, data = sock.recv_multipart()
        message = msgpack.unpackb(data)
        if message == "quit":
            break
        reply(sock, route, msgpack.packb(message))
    sock.close()
    context.term()


def serve_raw() -> None:
    context = zmq.Context()
    sock = server_socket(context)
    count = 0
    while True:
        route, data = sock.recv_multipart()
        message = msgpack.unpackb(data)
        if isinstance(message, dict) and "op" in message:  # a one-way message
            count += 1
        elif isinstance(message, list):  # a batch of one-way messages
            count += len(message)
        elif message == "report":
            reply(sock, route, msgpack.packb(count))
            count = 0
        elif message == "quit":
            break
        else:  # an ask: echo it
            reply(sock, route, data)
    sock.close()
    context.term()


class Counter(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def receive(self, message):
        if message == "report":
            count, self.count = self.count, 0
            return count
        self.count += 1
        return None


class Echo(Actor):
    def receive(self, message):
        return message


def serve_agentflow() -> None:
    node = Node("bench-server").start()
    node.spawn(Counter, name="counter")
    node.spawn(Counter, name="pcounter", pinned=True)
    node.spawn(Echo, name="echo")
    node.spawn(Echo, name="pecho", pinned=True)
    print(node.endpoint, flush=True)
    sys.stdin.read()
    node.stop()


# --------------------------------------------------------------------------- clients

def start_server(role: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", role], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    return proc, read_line(proc, 30, f"the {role} server", "tcp://")


def client_socket(context: zmq.Context, endpoint: str) -> zmq.Socket:
    """A DEALER whose receives give up after RECV_TIMEOUT_S (zmq.Again; see ``recv``)."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(RECV_TIMEOUT_S * 1000))
    sock.connect(endpoint)
    return sock


def recv(sock: zmq.Socket, what: str) -> bytes:
    try:
        return sock.recv()
    except zmq.Again:
        raise RuntimeError(f"no {what} within {RECV_TIMEOUT_S:g} s") from None


def stop_raw_server(endpoint: str) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)  # let the quit frame leave before the socket closes
    sock.connect(endpoint)
    sock.send(msgpack.packb("quit"))
    sock.close()
    context.term()


def raw_tells(endpoint: str, messages: int, per_frame: int) -> float:
    context = zmq.Context()
    sock = client_socket(context, endpoint)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.send(msgpack.packb("warm"))
    recv(sock, "warm-up echo")
    started = time.perf_counter()
    if per_frame == 1:
        for _ in range(messages):
            sock.send(msgpack.packb(PAYLOAD))
    else:
        for _ in range(messages // per_frame):
            sock.send(msgpack.packb([PAYLOAD] * per_frame))
    sock.send(msgpack.packb("report"))
    received = msgpack.unpackb(recv(sock, "count of one-way messages"))
    elapsed = time.perf_counter() - started
    if received != messages // per_frame * per_frame:
        raise RuntimeError(f"the raw server counted {received} of {messages // per_frame * per_frame} messages")
    sock.close()
    context.term()
    return received / elapsed


def raw_pipelined(endpoint: str, messages: int, per_frame: int, window: int = 1000) -> float:
    """Round trips/s with up to ``window`` messages outstanding (the probe's raw measure)."""
    context = zmq.Context()
    sock = client_socket(context, endpoint)
    frame = msgpack.packb(PAYLOAD if per_frame == 1 else [PAYLOAD] * per_frame)
    frames = messages // per_frame
    window_frames = max(1, window // per_frame)
    sent = received = 0
    started = time.perf_counter()
    while received < frames:
        while sent < frames and sent - received < window_frames:
            sock.send(frame)
            sent += 1
        msgpack.unpackb(recv(sock, f"echo ({received} of {frames} frames back)"))
        received += 1
    elapsed = time.perf_counter() - started
    sock.close()
    context.term()
    return frames * per_frame / elapsed


def round_trips_us(ask: Callable[[int], Any], asks: int) -> list[float]:
    """Microseconds each of ``asks`` sequential ``ask(i)`` calls took."""
    samples = []
    for i in range(asks):
        started = time.perf_counter()
        ask(i)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def raw_asks(endpoint: str, asks: int) -> list[float]:
    context = zmq.Context()
    sock = client_socket(context, endpoint)

    def ask(i: int) -> None:
        sock.send(msgpack.packb(i))
        msgpack.unpackb(recv(sock, "reply to a round trip"))

    samples = round_trips_us(ask, asks)
    sock.close()
    context.term()
    return samples


def agentflow_tells(node: Node, endpoint: str, actor: str, messages: int) -> float:
    ref = node.ref(endpoint, actor)
    ref.ask("report", timeout_s=10).get()
    started = time.perf_counter()
    for _ in range(messages):
        ref.tell(PAYLOAD)
    received = 0
    deadline = time.monotonic() + 60
    while received < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{actor} counted {received} of {messages} tells after 60 s (sender dropped "
                               f"{node.stats().get('send_dropped_hwm', 0)} at its high-water mark)")
        received += ref.ask("report", timeout_s=RECV_TIMEOUT_S).get()
    return messages / (time.perf_counter() - started)


def agentflow_asks(node: Node, endpoint: str, actor: str, asks: int) -> list[float]:
    ref = node.ref(endpoint, actor)
    ref.ask("warm", timeout_s=RECV_TIMEOUT_S).get()
    return round_trips_us(lambda i: ref.ask(i, timeout_s=RECV_TIMEOUT_S).get(), asks)


def direct_asks(node: Node, endpoint: str, actor: str, asks: int) -> list[float]:
    direct = DirectAsks(node.node_id, node.endpoint)
    try:
        direct.ask(endpoint, actor, "warm", RECV_TIMEOUT_S)
        return round_trips_us(lambda i: direct.ask(endpoint, actor, i, RECV_TIMEOUT_S), asks)
    finally:
        direct.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--asks", type=int, default=5_000)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--serve", choices=["raw", "raw-echo", "agentflow"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "raw":
        return serve_raw()
    if args.serve == "raw-echo":
        return serve_raw_echo()
    if args.serve == "agentflow":
        return serve_agentflow()

    raw_proc, raw_endpoint = start_server("raw")
    echo_proc, echo_endpoint = start_server("raw-echo")
    af_proc, af_endpoint = start_server("agentflow")
    node = Node("bench-client").start()
    runs: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    try:
        for run in range(args.runs):
            add("raw_pipelined_1", raw_pipelined(echo_endpoint, args.messages, 1))
            add("raw_pipelined_64", raw_pipelined(echo_endpoint, args.messages, 64))
            add("raw_tell_1", raw_tells(raw_endpoint, args.messages, 1))
            add("raw_tell_64", raw_tells(raw_endpoint, args.messages, 64))
            add("af_tell", agentflow_tells(node, af_endpoint, "counter", args.messages))
            add("af_tell_pinned", agentflow_tells(node, af_endpoint, "pcounter", args.messages))
            raw_rtt = raw_asks(raw_endpoint, args.asks)
            af_rtt = agentflow_asks(node, af_endpoint, "pecho", args.asks)
            af_rtt_pykka = agentflow_asks(node, af_endpoint, "echo", args.asks)
            af_rtt_direct = direct_asks(node, af_endpoint, "pecho", args.asks)
            for name, samples in (("raw", raw_rtt), ("af", af_rtt), ("af_pykka", af_rtt_pykka),
                                  ("af_direct", af_rtt_direct)):
                add(f"{name}_p50", percentile(samples, 0.5))
                add(f"{name}_p99", percentile(samples, 0.99))
                add(f"{name}_asks_per_s", len(samples) / (sum(samples) / 1e6))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        node.stop()
        stop_raw_server(raw_endpoint)
        stop_raw_server(echo_endpoint)
        af_proc.stdin.close()
        for proc in (raw_proc, echo_proc, af_proc):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    raw1 = "raw pyzmq, 1 msg/frame, pipelined echo"
    raw64 = "raw pyzmq, 64 msgs/frame, pipelined echo"
    oneway1 = "raw pyzmq, 1 msg/frame, one-way"
    oneway64 = "raw pyzmq, 64 msgs/frame, one-way"
    results = [
        Result("tell_msgs_per_s", "msgs/s", True, runs["af_tell"], raw1, runs["raw_pipelined_1"]),
        Result("tell_msgs_per_s_vs_batched", "msgs/s", True, runs["af_tell"], raw64, runs["raw_pipelined_64"]),
        Result("tell_msgs_per_s_vs_oneway", "msgs/s", True, runs["af_tell"], oneway1, runs["raw_tell_1"]),
        Result("tell_msgs_per_s_vs_oneway_batched", "msgs/s", True, runs["af_tell"], oneway64, runs["raw_tell_64"]),
        Result("tell_msgs_per_s_pinned_actor", "msgs/s", True, runs["af_tell_pinned"], raw1, runs["raw_pipelined_1"]),
        Result("ask_rtt_p50_us", "us", False, runs["af_p50"], "raw round trip", runs["raw_p50"]),
        Result("ask_rtt_p99_us", "us", False, runs["af_p99"], "raw round trip", runs["raw_p99"]),
        Result("ask_rtt_p50_us_pykka_actor", "us", False, runs["af_pykka_p50"], "raw round trip", runs["raw_p50"]),
        Result("ask_rtt_p50_us_client_direct", "us", False, runs["af_direct_p50"], "raw round trip", runs["raw_p50"]),
        Result("ask_round_trips_per_s", "asks/s", True, runs["af_asks_per_s"], "raw round trip", runs["raw_asks_per_s"]),
    ]
    report("transport", results, args.json_path)


if __name__ == "__main__":
    os.environ.setdefault("AGENTFLOW_LOG", "warn")
    main()
