"""Messaging benchmark: agent to agent on AgentFlow vs raw pyzmq+msgpack, AutoGen and Ray, one run.

    .venv/bin/python bench/messaging.py [--runs 3] [--requests 2000] [--messages 20000]
                                        [--broadcasts 1000] [--error-deadline-s 10] [--json FILE]

Every system runs across real processes on 127.0.0.1, the caller in one process and the agents in
others, and measures the same things:
* ``msgs_per_s``: one-way messages from the caller to an agent that counts them, pipelined (no
  wait between sends), until the agent has them all;
* ``request_p50_us``/``p99``, ``round_trips_per_s``: sequential requests to an echo agent (one
  outstanding); ``pipelined_requests_per_s``: requests with many outstanding;
* ``broadcast_msgs_per_s``: broadcasts per second, each reaching all 8 subscriber agents (hosted
  in one other process; Ray's are 8 actors, one process each) before the clock stops;
* ``unknown_agent_error_ms``: from a request to an agent that does not exist to its error;
* ``killed_host_error_ms``: from the kill -9 of the process hosting an agent, with a request to
  it in flight, to that request's error; ``call_after_kill_error_ms``: a request sent after it.
A wait for an error that runs past ``--error-deadline-s`` is reported as "no error within S s"
with the deadline as its value: a lower bound, not a time measured to an error.

Systems: raw pyzmq+msgpack (the ceiling: DEALER/ROUTER echo with 64 messages per frame and window
1000, the one-outstanding round trip, and a PUB to 8 SUB sockets in one other process, 64
messages per frame; raw has no agents, so no error rows); AutoGen's distributed gRPC runtime and
Ray named actors, each in its own venv under .venv-peers (bench/peers/*.py; set up through pip
on first use); AgentFlow through its agent API (``AgentCommunication``; "not built", null, where
``agentflow`` exports none), whose pipelined requests come from 8 threads (a request blocks its
caller; AutoGen keeps 500 in flight, Ray all of them). Rows compare AgentFlow with the raw ceiling
or with the better of AutoGen and Ray in this run; the per-system detail goes to the JSON's
"systems". Every wait has a deadline; each peer's run is a child killed whole at its deadline.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import PEERS, Result, peer_python, report, run_child  # noqa: E402
from bench.peers.child import PAYLOAD, error_figures, percentile, read_line, request_figures  # noqa: E402
from bench.transport import raw_asks, raw_pipelined, start_server, stop_raw_server  # noqa: E402

SUBSCRIBERS = 8
PER_FRAME = 64
PEER_RUN_TIMEOUT_S = 600
# name -> (venv requirements, script, its arguments before the common ones)
PEER_SCRIPTS = {
    "autogen": (["autogen-core==0.7.5", "autogen-ext[grpc]==0.7.5"], "autogen_messaging.py", ["run"]),
    "ray": (["ray==2.60.0"], "ray_messaging.py", []),
}
# measure -> (unit, higher is better)
MEASURES = {
    "msgs_per_s": ("msgs/s", True),
    "pipelined_requests_per_s": ("requests/s", True),
    "request_p50_us": ("us", False),
    "request_p99_us": ("us", False),
    "actor_to_actor_p50_us": ("us", False),  # agent to agent: a request from inside an agent
    "round_trips_per_s": ("requests/s", True),
    "broadcast_msgs_per_s": ("broadcasts/s", True),
    "unknown_agent_error_ms": ("ms", False),
    "killed_host_error_ms": ("ms", False),
    "call_after_kill_error_ms": ("ms", False),
}
ERROR_MEASURES = ("unknown_agent_error_ms", "killed_host_error_ms", "call_after_kill_error_ms")


# =========================================================================== raw pyzmq + msgpack (the ceiling)


def serve_raw_subscribers(pub_endpoint: str, expected: int) -> None:
    """Child: 8 SUB sockets; "ready" once each has a warm-up frame, "done" once each has
    ``expected`` messages (every one decoded), or "short N" if a SUB hears nothing for 10 s."""
    context = zmq.Context()
    subs = []
    for _ in range(SUBSCRIBERS):
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(pub_endpoint)
        subs.append(sock)
    poller = zmq.Poller()
    for sock in subs:
        poller.register(sock, zmq.POLLIN)
    counts = {sock: -1 for sock in subs}  # -1: no warm-up frame yet
    ready = False
    while min(counts.values()) < expected:
        events = poller.poll(10_000)
        if not events:
            print(f"short {min(counts.values())}", flush=True)
            return
        for sock, _ in events:
            message = msgpack.unpackb(sock.recv())
            if message == "warm":
                counts[sock] = max(counts[sock], 0)
            else:
                counts[sock] += len(message)
        if not ready and min(counts.values()) >= 0:
            ready = True
            print("ready", flush=True)
    print("done", flush=True)
    for sock in subs:
        sock.close()
    context.term()


def raw_broadcasts_per_s(broadcasts: int) -> float:
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)  # nothing dropped: every subscriber gets every message
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    frames = broadcasts // PER_FRAME
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "raw-subs", f"tcp://127.0.0.1:{port}",
                             str(frames * PER_FRAME)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        warm = msgpack.packb("warm")
        # PUB/SUB: publish warm-up frames until every subscription is in place ("ready").
        while not select.select([proc.stdout], [], [], 0.05)[0]:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the raw subscribers did not get a warm-up frame within 30 s")
            pub.send(warm)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the raw subscribers did not start")
        started = time.perf_counter()
        frame = [PAYLOAD] * PER_FRAME
        for _ in range(frames):
            pub.send(msgpack.packb(frame))
        line = read_line(proc, 60, "raw subscribers", "")
        elapsed = time.perf_counter() - started
        if line != "done":
            raise RuntimeError(f"raw subscribers: {line}")
    finally:
        proc.kill()
        proc.wait(10)
        pub.close()
        context.term()
    return frames * PER_FRAME / elapsed


def raw_run(args) -> dict:
    echo_proc, endpoint = start_server("raw-echo")
    try:
        raw_pipelined(endpoint, 20_000, PER_FRAME)  # warm-up
        samples = raw_asks(endpoint, args.requests)
        return {
            "msgs_per_s": raw_pipelined(endpoint, args.messages * 5, PER_FRAME),
            "msgs_per_s_1_per_frame": raw_pipelined(endpoint, args.messages, 1),
            **request_figures(samples),
            "broadcast_msgs_per_s": raw_broadcasts_per_s(args.broadcasts * 20),
        }
    finally:
        stop_raw_server(endpoint)
        try:
            echo_proc.wait(10)
        except subprocess.TimeoutExpired:
            echo_proc.kill()
            echo_proc.wait(10)


# =========================================================================== peers (their own venvs)


def peer_run(name: str, args) -> dict:
    requirements, script, head = PEER_SCRIPTS[name]
    python, why = peer_python(name, requirements)
    if python is None:
        raise RuntimeError(why)
    common = ["--requests", str(args.requests), "--messages", str(args.messages), "--broadcasts",
              str(args.broadcasts), "--error-deadline-s", str(args.error_deadline_s)]
    return run_child([python, str(PEERS / script), *head, *common], PEER_RUN_TIMEOUT_S)


# =========================================================================== AgentFlow (the agent API)
# One function per measure, through AgentCommunication (runtime/agents.py): send_to_agent,
# broadcast, request(to_agent, content, timeout_ms) -> AgentMessage, raising AgentNotFound,
# AgentUnavailable, AgentError, MailboxFull or RequestTimeout. The agents are in
# bench/messaging_agents.py. Where agentflow exports no agent API, the rows report "not built".


def agentflow_missing() -> str | None:
    import agentflow

    absent = [name for name in ("AgentActor", "AgentCommunication", "AgentMessage", "MessageType")
              if not hasattr(agentflow, name)]
    return f"not built (agentflow exports no {', '.join(absent)} yet)" if absent else None


class AgentflowSetup:
    """One run's processes: 3 masters, a host process with the echo, counter and 8 subscriber
    agents (bench/messaging_agents.py), a "victim" host started by `agentflow agent run` (kill
    -9'd by the error measure), and the caller's own node and AgentCommunication here."""

    def __init__(self, args) -> None:
        from agentflow import LocalCluster

        self.args = args
        self.data_dir = Path(tempfile.mkdtemp(prefix="bench-messaging-"))
        self.cluster = LocalCluster(self.data_dir, masters=3)
        self.procs: list[subprocess.Popen] = []
        self.node = None

    def __enter__(self) -> AgentflowSetup:
        from agentflow import AgentCommunication, Node

        try:
            self.cluster.start(timeout_s=60)
            url = self.cluster.master_url
            env = dict(os.environ, PYTHONPATH=str(REPO))
            agents = subprocess.Popen([sys.executable, str(REPO / "bench" / "messaging_agents.py"), url],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            self.procs.append(agents)
            read_line(agents, 60, "the agent host", "ready")
            self.victim = subprocess.Popen(
                [sys.executable, "-m", "agentflow.cli", "agent", "run", "bench.messaging_agents:Sleeper",
                 "--agent-id", "victim", "--master-url", url], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
            self.procs.append(self.victim)
            # The caller: an agent too, on a node of our own (a broadcast leaves through its host's
            # PUB socket, which the subscribers' hosts connect to once the directory lists it).
            from bench.messaging_agents import Relay

            self.node = Node("bench-caller", master_urls=url).start()
            self.node.spawn(Relay, agent_id="bench-caller")
            self.comm = AgentCommunication(self.node, agent_id="bench-caller")
            for agent_id in ("echo", "counter", *(f"sub{i}" for i in range(SUBSCRIBERS)), "victim"):
                self.wait_for_agent(agent_id, 60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_for_agent(self, agent_id: str, timeout_s: float) -> None:
        from bench.messaging_agents import PING

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.comm.request(agent_id, PING, timeout_ms=1000)
                return
            except Exception as exc:  # not registered yet, or its host not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agent {agent_id} not reachable within {timeout_s} s: {exc}") from None
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self.node is not None:
            self.node.stop()
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.cluster.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def agentflow_count(comm, agent_id: str, expected: int, timeout_s: float) -> None:
    from bench.messaging_agents import COUNT

    deadline = time.monotonic() + timeout_s
    while (count := comm.request(agent_id, COUNT, timeout_ms=5000).content) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent {agent_id} has {count} of {expected} messages after {timeout_s} s")
        time.sleep(0.005)


def agentflow_msgs_per_s(setup: AgentflowSetup) -> float:
    from agentflow import MessageType
    from bench.messaging_agents import COUNT

    comm, messages = setup.comm, setup.args.messages
    base = comm.request("counter", COUNT, timeout_ms=5000).content
    started = time.perf_counter()
    for _ in range(messages):
        comm.send_to_agent(comm.message("counter", PAYLOAD, MessageType.NOTIFICATION))
    agentflow_count(comm, "counter", base + messages, 60)
    return messages / (time.perf_counter() - started)


def agentflow_request_samples(setup: AgentflowSetup) -> list[float]:
    comm = setup.comm
    for _ in range(50):
        comm.request("echo", PAYLOAD, timeout_ms=5000)
    samples = []
    for _ in range(setup.args.requests):
        started = time.perf_counter()
        comm.request("echo", PAYLOAD, timeout_ms=5000)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def agentflow_agent_to_agent_samples(setup: AgentflowSetup) -> list[float]:
    """Sequential requests from inside the caller's agent to the echo agent (it times them)."""
    requests = setup.args.requests
    return setup.comm.request("bench-caller", {"relay": requests, "payload": PAYLOAD},
                              timeout_ms=requests * 5000).content


def agentflow_pipelined_requests_per_s(setup: AgentflowSetup) -> float:
    """Requests from 8 threads at once (the API's request blocks its caller)."""
    requests, threads = setup.args.requests, 8
    errors: list[BaseException] = []

    def worker(count: int) -> None:
        try:
            for _ in range(count):
                setup.comm.request("echo", PAYLOAD, timeout_ms=5000)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(requests // threads,)) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    elapsed = time.perf_counter() - started
    if errors or any(thread.is_alive() for thread in pool):
        raise RuntimeError(f"pipelined requests failed: {errors[:1] or 'a thread still waits after 120 s'}")
    return requests // threads * threads / elapsed


def agentflow_broadcast_msgs_per_s(setup: AgentflowSetup) -> float:
    from agentflow import MessageType
    from bench.messaging_agents import COUNT

    comm, broadcasts = setup.comm, setup.args.broadcasts
    subscribers = [f"sub{i}" for i in range(SUBSCRIBERS)]

    def counts() -> list[int]:
        return [comm.request(agent, COUNT, timeout_ms=5000).content for agent in subscribers]

    # PUB/SUB: broadcast until every subscriber's host has connected to ours and heard one.
    deadline = time.monotonic() + 30
    while min(counts()) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("a subscriber heard no broadcast within 30 s")
        comm.broadcast(comm.message("", PAYLOAD, MessageType.NOTIFICATION))
        time.sleep(0.05)
    base = counts()
    started = time.perf_counter()
    for _ in range(broadcasts):
        comm.broadcast(comm.message("", PAYLOAD, MessageType.NOTIFICATION))
    for agent, before in zip(subscribers, base):
        agentflow_count(comm, agent, before + broadcasts, 60)
    return broadcasts / (time.perf_counter() - started)


def agentflow_time_to_error_ms(call, deadline_s: float, started: float | None = None) -> tuple[float, str]:
    started = time.perf_counter() if started is None else started
    try:
        call()
        return (time.perf_counter() - started) * 1000, "answered (no error)"
    except Exception as exc:  # the error we are timing; RequestTimeout at the deadline
        return (time.perf_counter() - started) * 1000, type(exc).__name__


def agentflow_unknown_agent_error_ms(setup: AgentflowSetup) -> tuple[float, str]:
    deadline_s = setup.args.error_deadline_s
    return agentflow_time_to_error_ms(
        lambda: setup.comm.request("nosuch", PAYLOAD, timeout_ms=int(deadline_s * 1000)), deadline_s)


def agentflow_killed_host_error_ms(setup: AgentflowSetup) -> tuple[tuple[float, str], tuple[float, str]]:
    """((ms to the in-flight request's error, its error), (ms to a later request's error, its error))."""
    deadline_s = setup.args.error_deadline_s
    outcome: list[tuple[float, str]] = []
    killed_at: list[float] = []

    def in_flight() -> None:
        try:
            setup.comm.request("victim", PAYLOAD, timeout_ms=int(deadline_s * 1000) + 1000)
            outcome.append(((time.perf_counter() - killed_at[0]) * 1000, "answered (no error)"))
        except Exception as exc:
            outcome.append(((time.perf_counter() - killed_at[0]) * 1000, type(exc).__name__))

    thread = threading.Thread(target=in_flight)
    thread.start()
    time.sleep(0.3)  # let it reach the victim's handler
    killed_at.append(time.perf_counter())
    setup.victim.kill()
    thread.join(deadline_s + 5)
    if not outcome:
        raise RuntimeError(f"the in-flight request to a killed host did not end within {deadline_s + 5} s")
    after = agentflow_time_to_error_ms(
        lambda: setup.comm.request("victim", PAYLOAD, timeout_ms=int(deadline_s * 1000)), deadline_s)
    return outcome[0], after


def agentflow_run(args) -> dict:
    with AgentflowSetup(args) as setup:
        samples = agentflow_request_samples(setup)
        unknown = agentflow_unknown_agent_error_ms(setup)
        relayed = agentflow_agent_to_agent_samples(setup)
        result = {
            **request_figures(samples),
            "actor_to_actor_p50_us": percentile(relayed, 0.5),
            "actor_to_actor_p99_us": percentile(relayed, 0.99),
            "pipelined_requests_per_s": agentflow_pipelined_requests_per_s(setup),
            "msgs_per_s": agentflow_msgs_per_s(setup),
            "broadcast_msgs_per_s": agentflow_broadcast_msgs_per_s(setup),
        }
        killed, after = agentflow_killed_host_error_ms(setup)
    return {"peer": "agentflow", **result, **error_figures(unknown, killed, after)}


# =========================================================================== the document


def best_peer(systems: dict, key: str) -> tuple[str, list[float]]:
    """The peer (AutoGen or Ray) with the better median for ``key`` in this run: (name, its runs)."""
    higher = MEASURES[key][1]
    candidates = [(statistics.median(s["runs"][key]), name, s) for name, s in systems.items()
                  if name in PEER_SCRIPTS and s["runs"].get(key)]
    if not candidates:
        return "autogen, ray (missing)", []
    _, name, system = (max if higher else min)(candidates, key=lambda c: c[0])
    label = system["name"]
    errors = system["runs"].get(key.removesuffix("_ms")) if key in ERROR_MEASURES else None
    if errors and any(e.startswith("no error") for e in errors):
        label += f": {next(e for e in errors if e.startswith('no error'))}"
    return label, system["runs"][key]


def collect(runners: dict, runs: int) -> dict[str, dict]:
    """Run every system once per round, ``runs`` rounds (the shared machine's load drifts: each
    system sees the same drift); per system {"name", "runs": {measure: [values]}, "failure"}. A
    failed run is reported (run number and error) and the rounds go on."""
    documents: dict[str, list[dict]] = {name: [] for name in runners}
    failures: dict[str, list[str]] = {name: [] for name in runners}
    for i in range(runs):
        for name, run in runners.items():
            try:
                documents[name].append(run())
                print(f"{name} run {i + 1}/{runs} done", file=sys.stderr, flush=True)
            except Exception as exc:
                failures[name].append(f"run {i + 1}: {type(exc).__name__}: {exc}")
                print(f"{name} {failures[name][-1]}", file=sys.stderr, flush=True)
    systems = {}
    for name, found in documents.items():
        per_key: dict[str, list] = {}
        for document in found:
            for key, value in document.items():
                per_key.setdefault(key, []).append(value)
        systems[name] = {"name": found[0].get("peer", name) if found else name, "runs": per_key,
                         "failure": "; ".join(failures[name]) or None}
    return systems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--broadcasts", type=int, default=1000)
    parser.add_argument("--error-deadline-s", type=float, default=10.0)
    parser.add_argument("--only", nargs="*", default=["raw", "agentflow", *PEER_SCRIPTS],
                        help="systems to run (default: all)")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--serve", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_raw_subscribers(args.serve[1], int(args.serve[2]))
    os.environ.setdefault("AGENTFLOW_LOG", "warning")

    missing = agentflow_missing()
    runners = {"raw": lambda: {"peer": "raw pyzmq+msgpack", **raw_run(args)},
               "agentflow": lambda: agentflow_run(args),
               **{name: (lambda n=name: peer_run(n, args)) for name in PEER_SCRIPTS}}
    systems = collect({name: runners[name] for name in args.only if not (name == "agentflow" and missing)},
                      args.runs)
    if "agentflow" in args.only and missing:
        systems["agentflow"] = {"name": "agentflow", "runs": {}, "failure": missing}
    systems = {name: systems[name] for name in args.only}  # the table's column order

    af = systems.get("agentflow", {"runs": {}})["runs"]
    raw = systems.get("raw", {"name": "raw pyzmq+msgpack", "runs": {}})

    def row(metric: str, key: str, against: tuple[str, list[float]]) -> Result:
        unit, higher = MEASURES[key]
        return Result(metric, unit, higher, af.get(key, []), against[0], against[1])

    raw_batched = (f"{raw['name']}, {PER_FRAME} msgs/frame, pipelined echo", raw["runs"].get("msgs_per_s", []))
    raw_rtt = (f"{raw['name']}, round trip", raw["runs"].get("request_p50_us", []))
    raw_pub = (f"{raw['name']}, PUB to {SUBSCRIBERS} SUBs, {PER_FRAME} msgs/frame",
               raw["runs"].get("broadcast_msgs_per_s", []))
    results = [
        row("agent_msgs_per_s", "msgs_per_s", raw_batched),
        row("agent_msgs_per_s_vs_peer", "msgs_per_s", best_peer(systems, "msgs_per_s")),
        row("agent_request_p50_us", "request_p50_us", raw_rtt),
        row("agent_request_p50_us_vs_peer", "request_p50_us", best_peer(systems, "request_p50_us")),
        row("agent_request_p99_us_vs_peer", "request_p99_us", best_peer(systems, "request_p99_us")),
        row("agent_to_agent_request_p50_us_vs_peer", "actor_to_actor_p50_us",
            best_peer(systems, "actor_to_actor_p50_us")),
        row("agent_round_trips_per_s_vs_peer", "round_trips_per_s", best_peer(systems, "round_trips_per_s")),
        row("agent_pipelined_requests_per_s_vs_peer", "pipelined_requests_per_s",
            best_peer(systems, "pipelined_requests_per_s")),
        row("agent_broadcast_msgs_per_s", "broadcast_msgs_per_s", best_peer(systems, "broadcast_msgs_per_s")),
        row("agent_broadcast_msgs_per_s_vs_raw", "broadcast_msgs_per_s", raw_pub),
        *(row(f"agent_{key}_vs_peer", key, best_peer(systems, key)) for key in ERROR_MEASURES),
    ]
    detail = {name: {"name": s["name"], "failure": s["failure"], **medians_of(s["runs"])}
              for name, s in systems.items()}
    print_systems(detail)
    report("messaging", results, args.json_path, systems=detail)


def medians_of(runs: dict[str, list]) -> dict:
    out: dict = {}
    for key, values in runs.items():
        if key == "peer":
            continue
        if values and isinstance(values[0], (int, float)):
            out[key] = {"median": round(statistics.median(values), 3), "runs": [round(v, 3) for v in values]}
        else:
            out[key] = values
    return out


def print_systems(detail: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="messaging: every system, medians (errors: what was raised)")
    table.add_column("measure")
    for system in detail.values():
        table.add_column(system["name"])
    extra = [("msgs_per_s_1_per_frame", ("msgs/s", True)), ("actor_to_actor_p99_us", ("us", False))]
    for key, (unit, _) in [*MEASURES.items(), *extra]:
        cells = []
        for system in detail.values():
            value = system.get(key)
            error = system.get(key.removesuffix("_ms")) if key in ERROR_MEASURES else None
            cell = "-" if value is None else f"{value['median']:,.1f}"
            if error:
                cell += f" ({', '.join(sorted(set(error)))})"
            cells.append(cell)
        table.add_row(f"{key} [{unit}]", *cells)
    table.add_row("failure", *[system["failure"] or "" for system in detail.values()])
    Console(width=max(Console().width, 150)).print(table)


if __name__ == "__main__":
    main()
