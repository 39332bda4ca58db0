"""Hostile input against real node processes: a master and a worker take a stream of hostile
frames (tests/fuzz/frames.py) on their ROUTER sockets, from peers that come and go.

Checked afterwards: both processes are alive; the master counted every frame it could not
decode, by reason (as many as the same codec rejects here); it still serves (a status, a lock,
a workflow that runs on the fuzzed worker); and neither process's memory grew without bound.
`make test` sends 10,000 frames to each; `make fuzz` (marker ``fuzz``) 500,000 to each, a million in all.

The worker runs with an empty PATH: without CURVE keys (as here) any peer can hand it a task,
and fuzzed frames may carry a shell command.
"""

from __future__ import annotations

import collections
import contextlib
import json
import time
import urllib.request

import psutil
import pytest
import zmq

from agentflow.cluster import ChildProcess, LocalCluster, find_free_ports
from protocols.workflow_spec import TaskNode, Workflow
from protocols.wire import ASK, DecodeError, decode_frame, encode_frame
from runtime.client import Client
from runtime.locks import DistributedLock
from tests.fuzz.frames import CATEGORIES, HostileFrames
from tests.procs import wait_for

pytestmark = pytest.mark.integration

PORT = 12050  # the master from 12050 (http +10, pub +100), its worker from PORT + 20
BARRIER_ID = 2**62  # a correlation id no hostile frame uses


@contextlib.contextmanager
def fuzz_targets(tmp_path, port: int = PORT):
    cluster = LocalCluster(tmp_path, masters=1, workers=0, first_port=port)
    client = Client(cluster.master_url, timeout_s=10.0)
    try:
        cluster.start(client)
        worker_port = find_free_ports(1, port + 20, offsets=(0,))[0]
        worker = ChildProcess("worker-1", ["worker", "--master-url", cluster.master_url, "--worker-id", "worker-1",
                                           "--port", str(worker_port)], tmp_path / "worker-1.log", worker_port,
                              prefix=["env", "PATH=/nonexistent"]).start()
        cluster.workers.append(worker)
        wait_for(lambda: client.workers(), 30.0, 0.1, "the worker to register")
        yield cluster, client
    except BaseException:
        print(cluster.logs()[-5000:])
        raise
    finally:
        client.close()
        cluster.stop()


def blast(endpoint: str, count: int, seed: int, peer_every: int = 5_000) -> collections.Counter:
    """Send ``count`` hostile messages to ``endpoint``, a new peer (socket) every ``peer_every``;
    returns what was sent by category, plus ``rejected_REASON`` for every one-part message the
    codec here rejects (the node must count as many) and ``wrong_parts``."""
    frames = HostileFrames(seed)
    sent: collections.Counter = collections.Counter()
    context = zmq.Context()
    sock = None
    try:
        for number in range(count):
            if number % peer_every == 0:
                if sock is not None:
                    barrier(sock)
                    sock.close(linger=0)
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDTIMEO, 10_000)
                sock.setsockopt(zmq.RCVHWM, 1000)
                sock.connect(endpoint)
            category, parts = frames.next()
            sent[category] += 1
            if len(parts) != 1:
                sent["wrong_parts"] += 1
            else:
                try:
                    decode_frame(parts[0])
                except DecodeError as exc:
                    sent[f"rejected_{exc.reason}"] += 1
            try:
                sock.send_multipart(parts)
            except zmq.Again:
                raise AssertionError(f"{endpoint} stopped reading: 10 s without taking a frame, after {number} "
                                     f"frames ({dict(sent)})") from None
            while sock.poll(0):  # answers to our asks: read and dropped
                sock.recv_multipart()
    finally:
        if sock is not None:
            barrier(sock)
            sock.close(linger=0)
        context.term()
    return sent


def barrier(sock: zmq.Socket, timeout_s: float = 60.0) -> None:
    """Ask the node something on this connection and wait for the answer: then it has read
    every frame sent before (a connection is read in order), and closing loses none."""
    sock.send(encode_frame("fuzzer", "", [(ASK, "fuzz", "nobody", BARRIER_ID, None)]))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sock.poll(100):
            try:
                if any(e.correlation_id == BARRIER_ID for e in decode_frame(sock.recv()).envelopes):
                    return
            except DecodeError:
                continue
    raise AssertionError(f"no answer to the barrier within {timeout_s} s")


def master_counters(cluster: LocalCluster) -> dict:
    port = cluster.masters[0].port + 10
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as answer:
        return json.loads(answer.read())["counters"]


def rss_mb(child) -> float:
    return psutil.Process(child.proc.pid).memory_info().rss / 2**20


def still_serves(cluster: LocalCluster, client: Client, name: str) -> None:
    assert cluster.alive(), cluster.logs()[-5000:]
    assert client.cluster_status(timeout_s=10)["leader"] == "master-1"
    lock = DistributedLock(client, owner=f"after-{name}", ttl_s=5.0, call_timeout_s=10.0)
    assert lock.acquire(f"after-{name}") and lock.release(f"after-{name}")
    workflow = Workflow(f"wf-after-{name}", tasks=[TaskNode("a", command="true"),
                                                   TaskNode("b", command=":", dependencies=["a"])])
    client.submit_workflow(workflow)
    status = client.wait_workflow(workflow.workflow_id, timeout_s=60)
    assert status["state"] == "completed", status
    assert status["tasks"]["a"]["worker"] == "worker-1"


def check_counted(sent: collections.Counter, before: dict, after: dict) -> None:
    """Every undecodable frame is counted under its reason (the node may count more: frames it
    received before this blast, or at once with the wrong part count)."""
    for key, expected in sent.items():
        if key.startswith("rejected_"):
            reason = key[len("rejected_"):]
            counted = after.get(f"bad_frames_{reason}", 0) - before.get(f"bad_frames_{reason}", 0)
            assert counted >= expected, (reason, counted, expected)
    counted_parts = after.get("bad_frames_bad_frame_count", 0) - before.get("bad_frames_bad_frame_count", 0)
    assert counted_parts >= sent["wrong_parts"]


def run_fuzz(tmp_path, frames_per_target: int, port: int = PORT) -> dict:
    with fuzz_targets(tmp_path, port) as (cluster, client):
        master, worker = cluster.masters[0], cluster.workers[0]
        before = master_counters(cluster)
        memory = {"master": [rss_mb(master)], "worker": [rss_mb(worker)]}
        sent_master: collections.Counter = collections.Counter()
        started = time.monotonic()
        for part in range(4):  # in quarters, to see whether memory keeps growing
            sent_master += blast(master.url, frames_per_target // 4, seed=part)
            blast(worker.url, frames_per_target // 4, seed=100 + part)
            memory["master"].append(rss_mb(master))
            memory["worker"].append(rss_mb(worker))
            assert cluster.alive(), cluster.logs()[-5000:]
        seconds = time.monotonic() - started
        one_part = sum(v for k, v in sent_master.items() if k in CATEGORIES) - sent_master["wrong_parts"]
        wait_for(lambda: master_counters(cluster)["frames_in"] - before.get("frames_in", 0) >= one_part,
                 60.0, 0.5, f"the master to read all {one_part} one-part frames")
        after = master_counters(cluster)
        check_counted(sent_master, before, after)
        still_serves(cluster, client, f"fuzz{frames_per_target}")
        return {"seconds": seconds, "memory_mb": memory, "sent": dict(sent_master),
                "counters": {k: v - before.get(k, 0) for k, v in after.items()
                             if k.startswith(("bad_frames", "rejected", "handler", "unknown", "actor_errors"))}}


@pytest.mark.timeout(300)
def test_hostile_frames_crash_nothing_and_every_bad_frame_is_counted(tmp_path):
    report = run_fuzz(tmp_path, 10_000)
    print(json.dumps(report, indent=1))
    for name, samples in report["memory_mb"].items():
        assert samples[-1] - samples[0] < 150, (name, samples)


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
def test_a_million_hostile_frames(tmp_path):
    report = run_fuzz(tmp_path, 500_000, port=PORT + 5)  # to the master and to the worker each: a million
    print(json.dumps(report, indent=1))
    for name, samples in report["memory_mb"].items():
        # bounded: the last quarter adds little, whatever the first did
        assert samples[-1] - samples[2] < max(50.0, (samples[2] - samples[0]) * 0.5), (name, samples)
