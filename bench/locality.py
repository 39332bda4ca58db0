"""Locality benchmark: pipelines whose stages hand large results to the next, with and without
data locality, on 3 masters and 2 workers.

    .venv/bin/python bench/locality.py [--pipelines 16] [--stages 6] [--bytes 524288] [--runs 3] [--json FILE]

Each stage calls ``bench.locality:stage``, which checks the size of its input and returns a
string of ``--bytes`` bytes. With locality (the default) a stage runs where the stage before
it ran and takes its input from that worker's result cache; with ``locality: none`` on every
task it runs on the least loaded worker and its input travels in its assignment. Every
result goes through the Raft log either way. Runs alternate between the two; the peer is the
run without locality.
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

from agentflow.cluster import LocalCluster  # noqa: E402
from bench.common import Result, report  # noqa: E402
from protocols.workflow_spec import TaskNode, TaskResources, Workflow  # noqa: E402
from runtime.client import Client  # noqa: E402

NO_RESOURCES = TaskResources(cpu=0.0)


def stage(size: int, inputs: dict | None = None) -> str:
    for name, value in (inputs or {}).items():
        if len(value) != size:
            raise ValueError(f"input {name} has {len(value)} bytes, not {size}")
    return "x" * size


def pipelines(args, locality: bool) -> Workflow:
    tasks = []
    for p in range(args.pipelines):
        for s in range(args.stages):
            dependencies = [f"p{p}s{s - 1}"] if s else []
            tasks.append(TaskNode(f"p{p}s{s}", call="bench.locality:stage", args=[args.bytes],
                                  dependencies=dependencies, resources=NO_RESOURCES,
                                  locality=None if locality else []))
    return Workflow(f"locality-{'on' if locality else 'off'}-{uuid.uuid4().hex[:8]}", "locality", tasks)


def wall_s(client: Client, workflow: Workflow) -> float:
    started = time.perf_counter()
    client.submit_workflow(workflow, timeout_s=60)
    status = client.wait_workflow(workflow.workflow_id, timeout_s=600, poll_s=0.02, tasks=False)
    elapsed = time.perf_counter() - started
    if status["state"] != "completed":
        raise RuntimeError(f"{workflow.workflow_id} ended {status['state']}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=16)
    parser.add_argument("--stages", type=int, default=6)
    parser.add_argument("--bytes", type=int, default=512 * 1024, help="size of each stage's result")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=28767)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    os.environ.setdefault("AGENTFLOW_LOG", "warn")

    runs: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="agentflow-locality-") as directory:
        local = LocalCluster(directory, masters=3, workers=2, first_port=args.port,
                             master_options=["--max-result-bytes", str(2 * args.bytes)],
                             worker_options=["--max-concurrent-tasks", "4"])
        try:
            local.start()
            with Client(local.master_url, timeout_s=30) as client:
                wall_s(client, pipelines(argparse.Namespace(pipelines=2, stages=2, bytes=args.bytes), True))
                for run in range(args.runs):
                    for locality in (True, False) if run % 2 == 0 else (False, True):
                        runs[locality].append(wall_s(client, pipelines(args, locality)))
                    print(f"run {run + 1}/{args.runs}: with {runs[True][-1]:.2f} s, without {runs[False][-1]:.2f} s",
                          file=sys.stderr)
        finally:
            local.stop()
    hops = args.pipelines * args.stages
    results = [Result(f"pipelines_{args.pipelines}x{args.stages}_of_{args.bytes // 1024}kb_s", "s", False,
                      runs[True], "AgentFlow without locality", runs[False]),
               Result("ms_per_stage", "ms", False, [wall * 1000 / hops for wall in runs[True]],
                      "AgentFlow without locality", [wall * 1000 / hops for wall in runs[False]])]
    report("locality", results, args.json_path)


if __name__ == "__main__":
    main()
