"""Ray tasks in the task benchmark (runs in .venv-peers/ray), the workloads of bench/tasks.py.

    python ray_tasks.py --runs 3 --tasks N --chain N --fanout N

A local Ray instance on 127.0.0.1 with its defaults (one worker process per core); no-op remote
functions: N independent tasks (tasks/s), a chain of dependent tasks (ms per hop), one root ->
N children -> one join (s). Every ``ray.get`` has a timeout. Prints one JSON line with each
workload's runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child import emit, ray_init, ray_local_only, task_arguments, tree_cpu_s  # noqa: E402

ray_local_only()
import ray  # noqa: E402

TIMEOUT_S = 600


@ray.remote
def noop(*_args):
    return 0


def main() -> None:
    args = task_arguments()
    ray_init(ray)
    runs: dict[str, list[float]] = {"noop": [], "chain": [], "fanout": [], "noop_cpu_us_per_task": []}
    try:
        ray.get([noop.remote() for _ in range(200)], timeout=TIMEOUT_S)  # warm-up: worker processes up
        for _ in range(args.runs):
            started, cpu_s = time.perf_counter(), tree_cpu_s()
            ray.get([noop.remote() for _ in range(args.tasks)], timeout=TIMEOUT_S)
            runs["noop"].append(args.tasks / (time.perf_counter() - started))
            runs["noop_cpu_us_per_task"].append((tree_cpu_s() - cpu_s) * 1e6 / args.tasks)  # driver, raylet, workers

            started = time.perf_counter()
            future = noop.remote(0)
            for _ in range(args.chain - 1):
                future = noop.remote(future)
            ray.get(future, timeout=TIMEOUT_S)
            runs["chain"].append((time.perf_counter() - started) * 1000 / args.chain)

            started = time.perf_counter()
            root = noop.remote(0)
            children = [noop.remote(root, i) for i in range(args.fanout)]
            ray.get(noop.remote(*children), timeout=TIMEOUT_S)
            runs["fanout"].append(time.perf_counter() - started)
            print(f"ray run {len(runs['noop'])}/{args.runs} done", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    emit({"peer": f"ray {ray.__version__}", **runs})


if __name__ == "__main__":
    main()
