"""Task benchmark: AgentFlow (3 masters, Raft on, 2 workers) vs Dask distributed, side by side.

    .venv/bin/python bench/tasks.py [--runs 3] [--tasks 10000] [--chain 500] [--fanout 5000] [--json FILE]

Workloads, each run on both systems in the same run:
* ``noop_tasks_per_s``: N independent tasks calling a function that does nothing;
* ``chain_ms_per_hop``: a chain of dependent tasks, wall time divided by its length;
* ``fanout_5000_s``: one root, 5,000 children, one join, wall time.
Every AgentFlow completion is committed through Raft. Dask runs LocalCluster(n_workers=2,
threads_per_worker=1) when installed (reported missing otherwise, never invented).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, report  # noqa: E402
from protocols.workflow_spec import TaskNode, TaskResources, Workflow  # noqa: E402
from runtime.client import Client  # noqa: E402
from agentflow.cluster import LocalCluster  # noqa: E402

NOOP_CALL = "builtins:int"  # int() -> 0: a function call that does nothing, importable everywhere
NO_RESOURCES = TaskResources(cpu=0.0)  # placement by slots only: a no-op reserves nothing


def noop(*_args):
    return 0


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


# --------------------------------------------------------------------------- Dask


def dask_runs(args, runs: int) -> tuple[str, dict[str, list[float]]] | None:
    try:
        import dask
        from distributed import Client as DaskClient, LocalCluster as DaskCluster
    except ImportError:
        return None
    import logging

    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # its shutdown chatter is not a result
    results: dict[str, list[float]] = {"noop": [], "chain": [], "fanout": []}
    with DaskCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            DaskClient(cluster) as client:
        client.submit(noop, 0).result()
        for _ in range(runs):
            started = time.perf_counter()
            client.gather(client.map(noop, range(args.tasks), pure=False))
            results["noop"].append(args.tasks / (time.perf_counter() - started))

            started = time.perf_counter()
            future = client.submit(noop, 0, pure=False)
            for _ in range(args.chain - 1):
                future = client.submit(noop, future, pure=False)
            future.result()
            results["chain"].append((time.perf_counter() - started) * 1000 / args.chain)

            started = time.perf_counter()
            root = client.submit(noop, 0, pure=False)
            children = [client.submit(noop, root, i, pure=False) for i in range(args.fanout)]
            client.submit(noop, *children, pure=False).result()
            results["fanout"].append(time.perf_counter() - started)
    return f"dask {dask.__version__}", results


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=500)
    parser.add_argument("--fanout", type=int, default=5_000)
    parser.add_argument("--slots", type=int, default=4, help="task slots per AgentFlow worker")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    os.environ.setdefault("AGENTFLOW_LOG", "warn")

    runs: dict[str, list[float]] = {"noop": [], "chain": [], "fanout": []}
    with tempfile.TemporaryDirectory(prefix="agentflow-bench-") as directory:
        local = LocalCluster(directory, masters=3, workers=2, first_port=26767,
                             worker_options=["--max-concurrent-tasks", str(args.slots)])
        try:
            local.start()
            with Client(local.master_url, timeout_s=30) as client:
                agentflow_wall_s(client, agentflow_workflow("independent", 10))  # warm up
                for run in range(args.runs):
                    runs["noop"].append(args.tasks / agentflow_wall_s(client, agentflow_workflow("independent", args.tasks)))
                    runs["chain"].append(agentflow_wall_s(client, agentflow_workflow("chain", args.chain)) * 1000 / args.chain)
                    runs["fanout"].append(agentflow_wall_s(client, agentflow_workflow("fanout", args.fanout)))
                    print(f"agentflow run {run + 1}/{args.runs} done", file=sys.stderr)
        finally:
            local.stop()

    peer = dask_runs(args, args.runs)
    peer_name, peer_runs = peer if peer else ("dask (not installed)", {"noop": [], "chain": [], "fanout": []})
    results = [
        Result("noop_tasks_per_s", "tasks/s", True, runs["noop"], peer_name, peer_runs["noop"]),
        Result("chain_ms_per_hop", "ms", False, runs["chain"], peer_name, peer_runs["chain"]),
        Result(f"fanout_{args.fanout}_s", "s", False, runs["fanout"], peer_name, peer_runs["fanout"]),
    ]
    report("tasks", results, args.json_path)


if __name__ == "__main__":
    main()
