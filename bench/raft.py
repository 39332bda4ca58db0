"""Raft benchmark: three AgentFlow masters vs a three-process PySyncObj counter, on 127.0.0.1.

    .venv/bin/python bench/raft.py [--runs 3] [--commands 50000] [--window 10000] [--sequential 1000] [--json FILE]
    .venv/bin/python bench/raft.py --curve [--runs 5] ...    # AgentFlow with CURVE on against CURVE off

Each run starts a fresh cluster of three processes for each system, measures, and stops it:

* ``commits_per_s``: committed commands/s with ``--window`` (10,000) commands in flight. AgentFlow:
  pipelined asks ``Propose(ClientCommand(client, seq, Noop(i)))`` from one client Node to the
  leader's "raft" actor; every entry is durable in SQLite (WAL, synchronous=FULL) on a majority
  before it is answered. PySyncObj: ``@replicated`` calls with callbacks on the leader process.
* ``commit_p50_ms`` / ``commit_p99_ms``: one outstanding command at a time. AgentFlow through
  ``Client.propose`` (another process, one network round trip to the leader); PySyncObj through
  ``incCounter(sync=True)`` on the leader process itself (no client hop: in its favour).
* ``failover_s``: kill -9 of the leader until a write commits, with default timing. The writer
  retries on every master with a short per-try timeout (0.25 s), so this measures the cluster,
  not a client's timeout. ``failover_s_client`` is the same kill seen by a stock ``Client``
  (per-try timeout ``runtime.client.PER_TRY_TIMEOUT_S``) that had the old leader cached.

With ``--curve`` there is no peer: each run measures AgentFlow twice, on a fresh cluster with
CURVE off and on one with CURVE on (keys for the masters and the benchmark's client, made once
per invocation; nothing else differs), the order alternating from run to run, and reports each
figure as ``METRIC_curve`` rows and a ``"curve"`` document (bench/common.py ``curve_report``),
with the leader's CPU per commit too, pipelined and sequential, in all its threads
(``leader_cpu_us_per_commit``, ``leader_cpu_us_per_sequential_commit``) and in libzmq's I/O
threads, where CURVE's crypto runs (``leader_zmq_io_cpu_us_per_commit``, ``..._sequential_commit``).

PySyncObj (``pip install pysyncobj``; never a project dependency) runs in two modes: its default
(``appendEntriesUseBatch=True``) and with batching off; its log is in memory. For each metric the
peer is the better of the two modes. When PySyncObj is not installed it is reported missing.
Every process started here is stopped here (also on Ctrl-C); data lives in a temporary directory
removed at the end. Only 127.0.0.1 is used.

Diagnosis hooks (environment): ``AGENTFLOW_MASTER_LOG`` sets the masters' log level (default
info); ``AGENTFLOW_BENCH_PYTHONPATH`` is put before the repository on the masters' PYTHONPATH
(e.g. a scratch directory with a ``sitecustomize.py`` that profiles or times them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (CurveSetup, Result, cpu_s_by_thread, cpu_us_per_item, curve_order, curve_report,  # noqa: E402
                          percentile, report)
from agentflow.cluster import find_free_ports, wait_until  # noqa: E402

HOST = "127.0.0.1"
FAILOVER_TRY_S = 0.25  # per-try timeout of the failover writer
FAILOVER_RETRY_PAUSE_S = 0.01
PYSYNCOBJ_BATCH_SEQUENTIAL = 30  # sequential samples in PySyncObj's batching mode (~100 ms each)


# =========================================================================== PySyncObj (child process)

def serve_pysyncobj(self_port: int, partner_ports: list[int], batch: bool) -> None:
    """A PySyncObj replicated counter; driven by one-line commands on stdin, answers on stdout.

    ``status`` -> {"leader": bool, "ready": bool}; ``pipelined N WINDOW`` -> {"per_s"};
    ``sequential N`` -> {"samples_ms": [...]}; ``write`` -> {"t": monotonic time of the commit}
    (retries until a write commits). End of stdin or ``quit`` stops it.
    """
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):
        def __init__(self) -> None:
            conf = SyncObjConf(appendEntriesUseBatch=batch, dynamicMembershipChange=False)
            super().__init__(f"{HOST}:{self_port}", [f"{HOST}:{p}" for p in partner_ports], conf)
            self.value = 0

        @replicated
        def inc(self) -> int:
            self.value += 1
            return self.value

    counter = Counter()

    def answer(document: dict) -> None:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()

    def pipelined(n: int, window: int) -> float:
        slots = threading.Semaphore(window)
        done = threading.Event()
        state = {"left": n, "errors": 0}
        lock = threading.Lock()

        def on_done(result, error) -> None:
            with lock:
                if error != FAIL_REASON.SUCCESS:
                    state["errors"] += 1
                state["left"] -= 1
                if state["left"] == 0:
                    done.set()
            slots.release()

        started = time.perf_counter()
        for _ in range(n):
            slots.acquire()
            counter.inc(callback=on_done)
        if not done.wait(120):
            raise RuntimeError("pysyncobj pipelined run did not finish")
        elapsed = time.perf_counter() - started
        if state["errors"]:
            raise RuntimeError(f"pysyncobj: {state['errors']} commands failed")
        return n / elapsed

    def sequential(n: int) -> list[float]:
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            counter.inc(sync=True, timeout=10)
            samples.append((time.perf_counter() - started) * 1e3)
        return samples

    def write_until_committed() -> float:
        while True:
            done = threading.Event()
            outcome = {}

            def on_done(result, error) -> None:
                outcome["ok"] = error == FAIL_REASON.SUCCESS
                done.set()

            counter.inc(callback=on_done)
            if done.wait(FAILOVER_TRY_S) and outcome.get("ok"):
                return time.monotonic()
            time.sleep(FAILOVER_RETRY_PAUSE_S)

    answer({"serving": True})
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "status":
            answer({"leader": counter._isLeader(), "ready": counter.isReady()})
        elif words[0] == "pipelined":
            answer({"per_s": pipelined(int(words[1]), int(words[2]))})
        elif words[0] == "sequential":
            answer({"samples_ms": sequential(int(words[1]))})
        elif words[0] == "write":
            answer({"t": write_until_committed()})
    counter.destroy()


class PySyncObjProcess:
    def __init__(self, port: int, partners: list[int], batch: bool, log_path: Path) -> None:
        self.port = port
        self._log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-pysyncobj", str(port), ",".join(map(str, partners)),
             "batch" if batch else "nobatch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=REPO)
        self.request_line = None
        if self._read(30).get("serving") is not True:
            raise RuntimeError("pysyncobj child did not start")

    def _read(self, timeout_s: float) -> dict:
        box: dict = {}

        def reader() -> None:
            box["line"] = self.proc.stdout.readline()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(timeout_s)
        line = box.get("line")
        if not line:
            raise RuntimeError(f"pysyncobj child on port {self.port} did not answer within {timeout_s} s")
        return json.loads(line)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def request(self, command: str, timeout_s: float = 120) -> dict:
        self.send(command)
        return self._read(timeout_s)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream and not stream.closed:
                    stream.close()
            except OSError:
                pass
        self._log.close()


def pysyncobj_version() -> str | None:
    try:
        from importlib.metadata import version

        import pysyncobj  # noqa: F401

        return version("pysyncobj")
    except Exception:
        return None


def run_pysyncobj(batch: bool, args, data_dir: Path, procs: list) -> dict:
    """One run of the three figures for PySyncObj in one mode on a fresh three-process cluster."""
    ports = find_free_ports(3, offsets=(0,))
    mode = "batch" if batch else "nobatch"
    nodes = []
    for port in ports:
        node = PySyncObjProcess(port, [p for p in ports if p != port], batch, data_dir / f"pso-{mode}-{port}.log")
        nodes.append(node)
        procs.append(node)

    def leader():
        found = [n for n in nodes if n.alive() and n.request("status", 10)["leader"]]
        ready = all(n.request("status", 10)["ready"] for n in nodes if n.alive())
        return found[0] if len(found) == 1 and ready else None

    try:
        lead = wait_until(leader, 30, "a pysyncobj leader")
        lead.request("sequential 20")  # warm-up
        per_s = lead.request(f"pipelined {args.commands} {args.window}")["per_s"]
        n_seq = args.sequential if not batch else min(args.sequential, PYSYNCOBJ_BATCH_SEQUENTIAL)
        samples = lead.request(f"sequential {n_seq}")["samples_ms"]
        survivors = [n for n in nodes if n is not lead]
        started = time.monotonic()
        lead.kill()
        for node in survivors:
            node.send("write")
        committed = min(n._read(60)["t"] for n in survivors)
        failover = committed - started
    finally:
        for node in nodes:
            node.stop()
            procs.remove(node)
    return {"commits_per_s": per_s, "commit_p50_ms": percentile(samples, 0.5),
            "commit_p99_ms": percentile(samples, 0.99), "failover_s": failover}


# =========================================================================== AgentFlow masters

def agentflow_pipelined(node, leader_endpoint: str, commands: int, window: int) -> float:
    from protocols.control import ClientCommand, Noop, Propose
    from protocols.wire import encode

    ref = node.ref(leader_endpoint, "raft")
    client_id = f"bench-pipe-{uuid.uuid4().hex[:8]}"
    slots = threading.Semaphore(window)
    done = threading.Event()
    lock = threading.Lock()
    state = {"left": commands, "errors": 0, "first_error": None}

    def on_done(future) -> None:
        try:
            future.get()
        except Exception as exc:  # noqa: BLE001 - counted and reported below
            with lock:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or repr(exc)
        with lock:
            state["left"] -= 1
            if state["left"] == 0:
                done.set()
        slots.release()

    started = time.perf_counter()
    for i in range(commands):
        slots.acquire()
        # Encoded here, as runtime.client.Client.propose does: the leader logs the bytes as they are.
        ref.ask(Propose(encode(ClientCommand(client_id, i + 1, Noop(i)))), timeout_s=30).add_done_callback(on_done)
    if not done.wait(120):
        raise RuntimeError("agentflow pipelined run did not finish")
    elapsed = time.perf_counter() - started
    if state["errors"]:
        raise RuntimeError(f"agentflow: {state['errors']} proposals failed, first: {state['first_error']}")
    return commands / elapsed


def agentflow_sequential(client, n: int) -> list[float]:
    from protocols.control import Noop

    samples = []
    for i in range(n):
        started = time.perf_counter()
        client.propose(Noop(i), timeout_s=10)
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


def agentflow_failover(node, masters: list, leader, urls: list[str]) -> tuple[float, float]:
    """Kill -9 the leader; seconds until a write commits (fast writer, stock Client)."""
    from protocols.control import ClientCommand, Noop, Propose
    from protocols.wire import Redirect
    from runtime.client import Client

    stock = Client(urls, node=node)
    stock.propose(Noop("warm"), timeout_s=10)  # caches the leader, as a running client would have
    client_id = f"bench-failover-{uuid.uuid4().hex[:8]}"
    command = Propose(ClientCommand(client_id, 1, Noop("after-kill")))
    stock_result: dict = {}
    go = threading.Event()

    def stock_writer() -> None:
        go.wait(60)
        stock.propose(Noop("after-kill-stock"), timeout_s=30)
        stock_result["t"] = time.monotonic()

    thread = threading.Thread(target=stock_writer, daemon=True)
    thread.start()
    started = time.monotonic()
    leader.kill()
    go.set()
    outstanding: dict[str, object] = {}
    next_try: dict[str, float] = {m.url: 0.0 for m in masters}
    deadline = started + 60
    committed = None
    while committed is None:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError("no write committed within 60 s of the leader's kill")
        for master in masters:
            future = outstanding.get(master.url)
            if future is None:
                if now >= next_try[master.url]:
                    outstanding[master.url] = node.ref(master.url, "raft").ask(command, timeout_s=FAILOVER_TRY_S)
                continue
            if not future.done() and now < future.deadline:
                continue
            outstanding.pop(master.url)
            next_try[master.url] = now + FAILOVER_RETRY_PAUSE_S
            try:
                answer = future.get(timeout=0)
            except Exception:  # noqa: BLE001 - timeout or not_committed: try again
                continue
            if not isinstance(answer, Redirect):
                committed = time.monotonic()
                break
        time.sleep(0.001)
    thread.join(60)
    if "t" not in stock_result:
        raise RuntimeError("the stock client's write did not commit")
    return committed - started, stock_result["t"] - started


def run_agentflow(args, data_dir: Path, procs: list, curve: CurveSetup = CurveSetup()) -> dict:
    from runtime.client import Client
    from agentflow.cluster import LocalCluster
    from runtime.node import Node

    run_dir = Path(tempfile.mkdtemp(prefix="af-", dir=data_dir))
    os.environ["AGENTFLOW_LOG"] = os.environ.get("AGENTFLOW_MASTER_LOG", "info")  # the masters inherit it
    if os.environ.get("AGENTFLOW_BENCH_PYTHONPATH"):
        os.environ["PYTHONPATH"] = os.environ["AGENTFLOW_BENCH_PYTHONPATH"]
    cluster = LocalCluster(run_dir, masters=3, first_port=args.port, master_options=list(curve.master_options),
                           client_curve=curve.client)
    masters = cluster.masters
    procs.extend(masters)
    urls = [m.url for m in masters]
    node = Node(f"bench-raft-{uuid.uuid4().hex[:6]}", curve=curve.client).start()
    try:
        client = Client(urls, node=node, timeout_s=10)
        view = cluster.start(client, timeout_s=60)
        leader = cluster.by_id(view["leader"])
        agentflow_sequential(client, 50)  # warm-up
        cpu = [cpu_s_by_thread(leader.proc.pid)]
        per_s = agentflow_pipelined(node, leader.url, args.commands, args.window)
        cpu.append(cpu_s_by_thread(leader.proc.pid))
        samples = agentflow_sequential(client, args.sequential)
        cpu.append(cpu_s_by_thread(leader.proc.pid))
        failover, failover_client = agentflow_failover(node, masters, leader, urls)
    finally:
        node.stop()
        cluster.stop()
        for master in masters:
            procs.remove(master)
    return {"commits_per_s": per_s, "commit_p50_ms": percentile(samples, 0.5),
            "commit_p99_ms": percentile(samples, 0.99), "failover_s": failover,
            "failover_s_client": failover_client,
            **dict(zip(CPU_METRIC_NAMES[:2], cpu_us_per_item(cpu[0], cpu[1], args.commands))),
            **dict(zip(CPU_METRIC_NAMES[2:], cpu_us_per_item(cpu[1], cpu[2], args.sequential)))}


# =========================================================================== main

METRICS = [  # name, unit, higher is better
    ("commits_per_s", "commits/s", True),
    ("commit_p50_ms", "ms", False),
    ("commit_p99_ms", "ms", False),
    ("failover_s", "s", False),
]
CLIENT_FAILOVER_METRIC = ("failover_s_client", "s", False)
# The leader's CPU per commit, pipelined and sequential: all threads, and libzmq's I/O threads (CURVE's crypto).
CPU_METRIC_NAMES = ["leader_cpu_us_per_commit", "leader_zmq_io_cpu_us_per_commit",
                    "leader_cpu_us_per_sequential_commit", "leader_zmq_io_cpu_us_per_sequential_commit"]
CPU_METRICS = [(name, "us", False) for name in CPU_METRIC_NAMES]


def record(runs: dict[str, list[float]], figures: dict, what: str, run: int, total: int) -> None:
    for name, value in figures.items():
        runs.setdefault(name, []).append(value)
    print(f"run {run + 1}/{total} {what}: " + ", ".join(f"{k}={v[-1]:,.3f}" for k, v in runs.items()), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--commands", type=int, default=50_000, help="pipelined commands per run")
    parser.add_argument("--window", type=int, default=10_000,
                        help="commands in flight when pipelined (PySyncObj batching needs many: ~window/0.1 s)")
    parser.add_argument("--sequential", type=int, default=1000, help="sequential commands per run")
    parser.add_argument("--no-peer", action="store_true", help="skip PySyncObj")
    parser.add_argument("--curve", action="store_true",
                        help="AgentFlow with CURVE on against CURVE off, alternating, instead of the peer")
    parser.add_argument("--port", type=int, help="the first master port to try (default: random free ports)")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--serve-pysyncobj", nargs=3, metavar=("PORT", "PARTNERS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_pysyncobj:
        port, partners, mode = args.serve_pysyncobj
        return serve_pysyncobj(int(port), [int(p) for p in partners.split(",")], mode == "batch")

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    version = None if args.no_peer or args.curve else pysyncobj_version()
    data_dir = Path(tempfile.mkdtemp(prefix="agentflow-bench-raft-"))
    procs: list = []
    af_runs: dict[str, list[float]] = {}
    peer_runs: dict[str, dict[str, list[float]]] = {"batch": {}, "nobatch": {}}
    curve_runs: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    load_averages: list[float] = []
    try:
        setups = {"off": CurveSetup(), "on": CurveSetup.generate(data_dir / "keys")} if args.curve else {}
        for run in range(args.runs):
            load_averages.append(round(os.getloadavg()[0], 2))
            if args.curve:
                for mode in curve_order(run):
                    figures = run_agentflow(args, data_dir, procs, setups[mode])
                    record(curve_runs[mode], figures, f"agentflow CURVE {mode}", run, args.runs)
                continue
            record(af_runs, run_agentflow(args, data_dir, procs), "agentflow", run, args.runs)
            if version:
                for mode in ("batch", "nobatch"):
                    try:
                        figures = run_pysyncobj(mode == "batch", args, data_dir, procs)
                    except (RuntimeError, TimeoutError) as exc:  # a child or a leader past its deadline: this run is lost
                        print(f"run {run + 1}/{args.runs} pysyncobj {mode} failed: {exc}", file=sys.stderr)
                        continue
                    record(peer_runs[mode], figures, f"pysyncobj {mode}", run, args.runs)
    finally:
        for proc in list(procs):
            try:
                proc.kill()
                proc.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        shutil.rmtree(data_dir, ignore_errors=True)

    command = " ".join([Path(sys.executable).name, "bench/raft.py", *sys.argv[1:]])
    if args.curve:
        curve_report("raft", [*METRICS, CLIENT_FAILOVER_METRIC, *CPU_METRICS], curve_runs, load_averages, args.json_path,
                     command=command)
        return
    results = []
    for metric, unit, higher in METRICS:
        peer_name, peer_values = "pysyncobj (missing)", []
        medians = {mode: statistics.median(runs[metric]) for mode, runs in peer_runs.items() if runs.get(metric)}
        if medians:
            best = (max if higher else min)(medians, key=medians.get)
            peer_name = f"pysyncobj {version} ({'batching' if best == 'batch' else 'batching off'})"
            peer_values = peer_runs[best][metric]
        results.append(Result(metric, unit, higher, af_runs[metric], peer_name, peer_values))
    client_peer = min((runs["failover_s"] for runs in peer_runs.values() if runs.get("failover_s")),
                      key=statistics.median, default=[])
    results.append(Result(*CLIENT_FAILOVER_METRIC, af_runs["failover_s_client"],
                          "pysyncobj (best mode), fast writer" if client_peer else "pysyncobj (missing)", client_peer))
    document = report("raft", results, None)
    if version:
        document["pysyncobj_modes"] = {
            mode: {metric: {"median": round(statistics.median(values), 3), "runs": [round(v, 3) for v in values]}
                   for metric, values in peer_runs[mode].items()}
            for mode in peer_runs}
        for mode, figures in document["pysyncobj_modes"].items():
            print(f"pysyncobj {mode}: " + ", ".join(f"{k}={v['median']:,.3f}" for k, v in figures.items()))
    document["command"] = command
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump(document, out, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("AGENTFLOW_LOG", "warn")
    main()
