"""Task benchmark: AgentFlow (3 masters, Raft on, 2 workers) vs Ray and Dask, side by side.

    .venv/bin/python bench/tasks.py [--runs 3] [--tasks 10000] [--chain 500] [--fanout 5000] [--json FILE]
    .venv/bin/python bench/tasks.py --curve [--runs 5] ...    # AgentFlow with CURVE on against CURVE off

Workloads, each run on every system in the same run:
* ``noop_tasks_per_s``: N independent tasks calling a function that does nothing;
* ``chain_ms_per_hop``: a chain of dependent tasks, wall time divided by its length;
* ``fanout_5000_s``: one root, 5,000 children, one join, wall time;
* ``cpu_us_per_task``: the CPU the no-op workload cost per task in all processes together: the
  benchmark process (AgentFlow's client, a peer's driver) and every process under it (masters,
  workers, task processes; a peer's scheduler, raylet and workers), read the same way for each
  system (bench/peers/child.py ``tree_cpu_s``).
Every AgentFlow completion is committed through Raft. Peers, each a child process under a
deadline (bench/peers/): Ray with its defaults on 127.0.0.1 (one worker process per core), in
its own venv (.venv-peers/ray, made through pip on first use); Dask LocalCluster(n_workers=2,
threads_per_worker=1) from the project's ``bench`` extra. A row's peer is the best of them in
this run, and the ``_vs_ray`` and ``_vs_dask`` rows compare with each; a peer that is not
installed is reported missing, never invented.

With ``--curve`` there are no peers: each run measures the three workloads twice, on a fresh
cluster with CURVE off and on one with CURVE on (keys for the masters, the workers and the
benchmark's client, made once per invocation; nothing else differs), the order alternating from
run to run, and reports ``METRIC_curve`` rows and a ``"curve"`` document (bench/common.py
``curve_report``), with the leader's CPU per task of each workload too, in all its threads
(``noop_leader_cpu_us_per_task``, ...) and in libzmq's I/O threads, where CURVE's crypto runs
(``noop_leader_zmq_io_cpu_us_per_task``, ...). Without ``--curve`` one cluster serves all runs.

Every AgentFlow run also prints the CPU each workload cost per task by process kind (the client,
the leader, the followers, the workers, the workers' task processes; Linux's per-thread
schedstat, in ns), and the document's ``cpu_us_per_task_by_process`` holds their medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (PEERS, CurveSetup, Result, cpu_s_by_thread, cpu_us_per_item, curve_order,  # noqa: E402
                          curve_report, peer_python, report, run_child)
from bench.peers.child import thread_cpu_s, tree_cpu_s  # noqa: E402
from protocols.workflow_spec import TaskNode, TaskResources, Workflow  # noqa: E402
from runtime.client import Client  # noqa: E402
from agentflow.cluster import LocalCluster  # noqa: E402

NOOP_CALL = "builtins:int"  # int() -> 0: a function call that does nothing, importable everywhere
NO_RESOURCES = TaskResources(cpu=0.0)  # placement by slots only: a no-op reserves nothing


# --------------------------------------------------------------------------- AgentFlow


def agentflow_workflow(kind: str, size: int) -> Workflow:
    workflow_id = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    def task(task_id: str, dependencies: list[str] = ()) -> TaskNode:
        return TaskNode(task_id, call=NOOP_CALL, dependencies=list(dependencies), resources=NO_RESOURCES)

    if kind == "independent":
        tasks = [task(f"t{i}") for i in range(size)]
    elif kind == "chain":
        tasks = [task(f"t{i}", [f"t{i - 1}"] if i else []) for i in range(size)]
    else:  # fan-out: root -> size children -> join
        children = [task(f"c{i}", ["root"]) for i in range(size)]
        tasks = [task("root"), *children, task("join", [c.task_id for c in children])]
    return Workflow(workflow_id, kind, tasks)


def agentflow_wall_s(client: Client, workflow: Workflow) -> float:
    started = time.perf_counter()
    client.submit_workflow(workflow, timeout_s=60)
    status = client.wait_workflow(workflow.workflow_id, timeout_s=600, poll_s=0.02)
    elapsed = time.perf_counter() - started
    if status["state"] != "completed":
        raise RuntimeError(f"{workflow.workflow_id} ended {status['state']}")
    return elapsed


PROCESS_KINDS = ("client", "leader", "followers", "workers", "task_processes")


def cpu_s_by_kind(local: LocalCluster, leader_id: str) -> dict[str, float]:
    """CPU seconds used so far by this process (the client), the leader, the followers, the
    workers and the workers' task processes (their live children; a task process recycled during
    a workload takes its CPU with it, so that figure is a floor, as an ended one counts nothing)."""
    totals = dict.fromkeys(PROCESS_KINDS, 0.0)

    def add(kind: str, pid: int) -> None:
        totals[kind] += sum(seconds for _, seconds in thread_cpu_s(pid))

    add("client", os.getpid())  # the Client's threads, and libzmq's
    for master in local.masters:
        add("leader" if master.node_id == leader_id else "followers", master.proc.pid)
    for worker in local.workers:
        add("workers", worker.proc.pid)
        try:
            children = psutil.Process(worker.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            add("task_processes", child.pid)
    return totals


def agentflow_runs(args, runs: dict[str, list[float]], count: int, curve: CurveSetup = CurveSetup(),
                   label: str = "agentflow") -> None:
    """``count`` runs of the three workloads on one fresh cluster (3 masters, 2 workers), appended
    to ``runs``, with the leader's CPU per task of each (``WORKLOAD_leader_cpu``: all threads;
    ``WORKLOAD_leader_zmq_io_cpu``: libzmq's I/O threads); every process is stopped on the way
    out, its logs kept if a run failed."""
    directory = tempfile.mkdtemp(prefix="agentflow-bench-")
    local = LocalCluster(directory, masters=3, workers=2, first_port=args.port,
                         worker_options=["--max-concurrent-tasks", str(args.slots), *curve.worker_options],
                         master_options=list(curve.master_options), client_curve=curve.client)
    finished = False
    try:
        leader_id = local.start()["leader"]
        leader_pid = local.by_id(leader_id).proc.pid
        with Client(local.master_url, timeout_s=30, curve=curve.client) as client:
            agentflow_wall_s(client, agentflow_workflow("independent", 10))  # warm up
            for run in range(count):
                for workload, kind, size in (("noop", "independent", args.tasks), ("chain", "chain", args.chain),
                                             ("fanout", "fanout", args.fanout)):
                    workflow = agentflow_workflow(kind, size)
                    cpu_before, kinds_before = cpu_s_by_thread(leader_pid), cpu_s_by_kind(local, leader_id)
                    tree_before_s = tree_cpu_s()
                    wall_s = agentflow_wall_s(client, workflow)
                    tree_us = (tree_cpu_s() - tree_before_s) * 1e6 / len(workflow.tasks)
                    cpu_us, zmq_io_cpu_us = cpu_us_per_item(cpu_before, cpu_s_by_thread(leader_pid), len(workflow.tasks))
                    kinds_after = cpu_s_by_kind(local, leader_id)
                    runs.setdefault(f"{workload}_cpu_us_per_task", []).append(tree_us)
                    for kind in PROCESS_KINDS:
                        runs.setdefault(f"{workload}_cpu_{kind}", []).append(
                            (kinds_after[kind] - kinds_before[kind]) * 1e6 / len(workflow.tasks))
                    runs[workload].append({"noop": size / wall_s, "chain": wall_s * 1000 / size}.get(workload, wall_s))
                    runs.setdefault(f"{workload}_leader_cpu", []).append(cpu_us)
                    runs.setdefault(f"{workload}_leader_zmq_io_cpu", []).append(zmq_io_cpu_us)
                progress = label if count == 1 else f"{label} run {run + 1}/{count}"
                print(f"{progress}: " + ", ".join(
                    f"{workload} {runs[workload][-1]:,.2f} ({runs[f'{workload}_leader_cpu'][-1]:,.0f} us of leader "
                    f"CPU a task, {runs[f'{workload}_leader_zmq_io_cpu'][-1]:,.1f} in libzmq's I/O thread)"
                    for workload in WORKLOADS), file=sys.stderr)
                print("  CPU us a task by process kind: " + "; ".join(
                    f"{workload} " + ", ".join(f"{kind} {runs[f'{workload}_cpu_{kind}'][-1]:,.0f}" for kind in PROCESS_KINDS)
                    + f", all {sum(runs[f'{workload}_cpu_{kind}'][-1] for kind in PROCESS_KINDS):,.0f}"
                    for workload in WORKLOADS), file=sys.stderr)
        finished = True
    finally:
        local.stop()
        if finished:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"agentflow failed: its masters' and workers' logs are kept in {directory}", file=sys.stderr)


# --------------------------------------------------------------------------- peers

PEER_RUN_TIMEOUT_S = 1800
WORKLOADS = ("noop", "chain", "fanout")
PEER_KEYS = (*WORKLOADS, "noop_cpu_us_per_task")  # what a peer's script reports


def peer_runs(name: str, args) -> tuple[str, dict[str, list[float]]]:
    """(the peer's name and version, its runs per workload); no runs, and why, when it cannot run."""
    if name == "ray":
        python, why = peer_python("ray", ["ray==2.60.0"])
    elif importlib.util.find_spec("distributed") is None:
        python, why = None, "not installed: pip install -e '.[bench]'"
    else:
        python, why = sys.executable, ""
    if python is not None:
        try:
            found = run_child([python, str(PEERS / f"{name}_tasks.py"), "--runs", str(args.runs), "--tasks",
                               str(args.tasks), "--chain", str(args.chain), "--fanout", str(args.fanout)],
                              PEER_RUN_TIMEOUT_S)
            return found["peer"], {key: found.get(key, []) for key in PEER_KEYS}
        except RuntimeError as exc:
            why = str(exc)
    print(f"{name}: {why}", file=sys.stderr)
    return f"{name} ({why})", {key: [] for key in PEER_KEYS}


def best_peer(peers: dict[str, tuple[str, dict]], workload: str, higher_is_better: bool) -> tuple[str, list[float]]:
    measured = [(statistics.median(runs[workload]), name, runs[workload]) for name, runs in peers.values()
                if runs[workload]]
    if not measured:
        return " / ".join(name for name, _ in peers.values()), []
    _, name, runs = (max if higher_is_better else min)(measured, key=lambda m: m[0])
    return name, runs


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=500)
    parser.add_argument("--fanout", type=int, default=5_000)
    parser.add_argument("--slots", type=int, default=4, help="task slots per AgentFlow worker")
    parser.add_argument("--curve", action="store_true",
                        help="AgentFlow with CURVE on against CURVE off, alternating, instead of the peers")
    parser.add_argument("--port", type=int, help="the first master port to try (default: random free ports)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    os.environ.setdefault("AGENTFLOW_LOG", "warn")
    # SIGTERM unwinds like Ctrl-C, through the finally blocks that stop every process started here.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    metrics = {"noop": ("noop_tasks_per_s", "tasks/s", True), "chain": ("chain_ms_per_hop", "ms", False),
               "fanout": (f"fanout_{args.fanout}_s", "s", False)}
    if args.curve:
        for workload in WORKLOADS:
            metrics[f"{workload}_leader_cpu"] = (f"{workload}_leader_cpu_us_per_task", "us", False)
            metrics[f"{workload}_leader_zmq_io_cpu"] = (f"{workload}_leader_zmq_io_cpu_us_per_task", "us", False)
        return curve_main(args, metrics)

    runs: dict[str, list[float]] = {workload: [] for workload in WORKLOADS}
    agentflow_runs(args, runs, args.runs)
    metrics["noop_cpu_us_per_task"] = ("cpu_us_per_task", "us", False)
    peers = {name: peer_runs(name, args) for name in ("ray", "dask")}
    results = []
    for suffix, choose in (("", None), ("_vs_ray", "ray"), ("_vs_dask", "dask")):
        for workload, (metric, unit, higher) in metrics.items():
            name, found = best_peer(peers if choose is None else {choose: peers[choose]}, workload, higher)
            results.append(Result(metric + suffix, unit, higher, runs[workload], name, found))
    cpu = {workload: {kind: round(statistics.median(runs[f"{workload}_cpu_{kind}"]), 1) for kind in PROCESS_KINDS}
           for workload in WORKLOADS}
    for workload, kinds in cpu.items():
        kinds["all"] = round(sum(kinds.values()), 1)
        print(f"{workload}: CPU us a task (median of runs): " + ", ".join(f"{k} {v:,.0f}" for k, v in kinds.items()))
    report("tasks", results, args.json_path, cpu_us_per_task_by_process=cpu)


def curve_main(args, metrics: dict[str, tuple[str, str, bool]]) -> None:
    runs = {mode: {workload: [] for workload in metrics} for mode in ("off", "on")}
    load_averages: list[float] = []
    keys_dir = Path(tempfile.mkdtemp(prefix="agentflow-bench-keys-"))
    try:
        setups = {"off": CurveSetup(), "on": CurveSetup.generate(keys_dir)}
        for run in range(args.runs):
            load_averages.append(round(os.getloadavg()[0], 2))
            for mode in curve_order(run):
                agentflow_runs(args, runs[mode], 1, setups[mode], f"agentflow CURVE {mode}, run {run + 1}/{args.runs}")
    finally:
        shutil.rmtree(keys_dir, ignore_errors=True)
    by_metric = {mode: {metric: workloads[w] for w, (metric, _, _) in metrics.items()} for mode, workloads in runs.items()}
    curve_report("tasks", list(metrics.values()), by_metric, load_averages, args.json_path,
                 command=" ".join([Path(sys.executable).name, "bench/tasks.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
