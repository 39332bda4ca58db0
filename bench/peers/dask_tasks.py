"""Dask distributed in the task benchmark (runs in the project's .venv, from the ``bench`` extra),
the workloads of bench/tasks.py.

    python dask_tasks.py --runs 3 --tasks N --chain N --fanout N

``LocalCluster(n_workers=2, threads_per_worker=1)``, processes; no-op functions: N independent
tasks (tasks/s), a chain of dependent tasks (ms per hop), one root -> N children -> one join (s).
Every wait has a timeout. Prints one JSON line with each workload's runs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
import time

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child import emit, task_arguments, tree_cpu_s  # noqa: E402

import dask  # noqa: E402
from distributed import Client, LocalCluster, wait  # noqa: E402

TIMEOUT_S = 600


def noop(*_args):
    return 0


def main() -> None:
    args = task_arguments()
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # its shutdown chatter is not a result
    runs: dict[str, list[float]] = {"noop": [], "chain": [], "fanout": [], "noop_cpu_us_per_task": []}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster, timeout=60) as client:
        client.submit(noop, 0).result(timeout=TIMEOUT_S)
        for _ in range(args.runs):
            started, cpu_s = time.perf_counter(), tree_cpu_s()
            futures = client.map(noop, range(args.tasks), pure=False)
            wait(futures, timeout=TIMEOUT_S)
            client.gather(futures)
            runs["noop"].append(args.tasks / (time.perf_counter() - started))
            runs["noop_cpu_us_per_task"].append((tree_cpu_s() - cpu_s) * 1e6 / args.tasks)  # client, scheduler, workers

            started = time.perf_counter()
            future = client.submit(noop, 0, pure=False)
            for _ in range(args.chain - 1):
                future = client.submit(noop, future, pure=False)
            future.result(timeout=TIMEOUT_S)
            runs["chain"].append((time.perf_counter() - started) * 1000 / args.chain)

            started = time.perf_counter()
            root = client.submit(noop, 0, pure=False)
            children = [client.submit(noop, root, i, pure=False) for i in range(args.fanout)]
            client.submit(noop, *children, pure=False).result(timeout=TIMEOUT_S)
            runs["fanout"].append(time.perf_counter() - started)
            print(f"dask run {len(runs['noop'])}/{args.runs} done", file=sys.stderr, flush=True)
    emit({"peer": f"dask {dask.__version__}", **runs})


if __name__ == "__main__":
    main()
